//! The core's own error type: the inputs the protocol refuses.
//!
//! The core knows nothing of gRPC. The crate's [`crate::error::Error`] wraps
//! this type, and turns it into a gRPC status with the right code at the
//! service edge, in one place (`src/error.rs`).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A chat message that is empty or longer than the limit.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A participant name that breaks the naming rules.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A request field out of its bounds (a Lamport clock far ahead, an
    /// oversized token or id, a `seen` vector claiming the impossible).
    #[error("{0}")]
    InvalidRequest(String),
    /// Another live participant already uses this name, or one a reader
    /// could not tell from it (`taken` is that name, as its holder typed it).
    #[error("{}", taken_message(.name, .taken))]
    NameTaken { name: String, taken: String },
    /// The name is held by a participant whose session lost its connection
    /// (perhaps the caller's own, from a client that was killed): it is
    /// freed when its grace period runs out, unless it resumes first.
    #[error(
        "name {name:?} is held by a session that lost its connection (your own, if your client was just cut off): it is freed in {secs} s unless that session resumes"
    )]
    NameHeld { name: String, secs: u64 },
    /// The name is held by a participant whose session is on another node:
    /// only that node knows whether it lost its connection.
    #[error(
        "name {name:?} is taken by a participant on node {node}; if that is your own session, cut off just now, it is freed within {secs} s unless it resumes (ask node {node} to be told exactly)"
    )]
    NameHeldElsewhere {
        name: String,
        node: String,
        secs: u64,
    },
    /// The session token does not belong to a live session.
    #[error("no live session for this token: join first (or the session has ended)")]
    UnknownSession,
    /// The node cannot serve the request now: it is stopping, or no other
    /// node acknowledged a message in time. Retrying may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

fn taken_message(name: &str, taken: &str) -> String {
    if name == taken {
        format!("name {name:?} is already taken by a live participant")
    } else {
        format!(
            "name {name:?} looks like {taken:?}, the name of a live participant \
             (names are compared by their look: case, width, accents and look-alike letters)"
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
