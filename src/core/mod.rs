//! The protocol core: no sockets, no tasks, no clocks but the logical one.
//!
//! Everything here is a plain type whose methods take an input and return what
//! follows from it (the events to broadcast, the error to answer). The node
//! shell calls these under one lock and routes the results to sessions and
//! peers. That keeps the rules testable directly and deterministically.

pub mod causal;
pub mod chat;
pub mod clock;
pub mod error;
pub mod event;
pub mod history;
pub mod membership;
pub mod names;
pub mod node;
pub mod rng;
pub mod tokens;
pub mod validate;

// Parts of `ChatCore`, each holding one concern of the chat state machine.
mod dedupe;
mod roster;

pub use chat::{ChatCore, Joined, Published};
pub use clock::LamportClock;
pub use error::Error;

/// The hash map of the hot paths: seeded per process like std's (keys such
/// as publish ids come from clients), but much cheaper to hash than SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
