//! Rules about events that several parts of the core (and the node) share.
//!
//! Kept apart from `chat` so that `history`, which `chat` uses, does not
//! have to reach back into it.

use crate::proto::{Event, EventKind};

/// Whether participants see `event` (internal ones stay between nodes).
pub fn visible(event: &Event) -> bool {
    event.kind() != EventKind::Moved
}
