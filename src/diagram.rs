//! The log records a Lamport sequence diagram is drawn from.
//!
//! Every service call and every event delivery is logged once on each side,
//! as a record with a fixed message (`start`, `rpc` or `event`) and fixed
//! fields: who logged it (a node, or a participant and the node it talks
//! to), which call, whether it was sent or received, the event it carries
//! (its id `origin:generation:seq`, its kind and its Lamport stamp), and the
//! logger's Lamport clock before and after the clock rule was applied.
//! `docs/logs.md` is the contract: fields are only ever added.
//!
//! The records are logged under target [`TARGET`], which the text format
//! leaves out (its lines for people stay as they were); `--log-format json`
//! writes them, one JSON object per line, beside the other lines.

use std::fmt;

use crate::proto::{Event, EventKind, NodeId};

/// The tracing target of every record.
pub const TARGET: &str = "chitty::diagram";

/// Which call (or stream message) a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Join,
    Publish,
    PublishStream,
    Leave,
    /// An event on a participant's Join stream.
    Deliver,
    ServerJoin,
    /// The answer to a ServerJoin, with the boot member's clock.
    ServerJoinReply,
    UpdateServers,
    /// An event in a relay batch (one record per event).
    RelayBatch,
    RelayAck,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Join => "Join",
            Call::Publish => "Publish",
            Call::PublishStream => "PublishStream",
            Call::Leave => "Leave",
            Call::Deliver => "Deliver",
            Call::ServerJoin => "ServerJoin",
            Call::ServerJoinReply => "ServerJoinReply",
            Call::UpdateServers => "UpdateServers",
            Call::RelayBatch => "RelayBatch",
            Call::RelayAck => "RelayAck",
        }
    }
}

/// Whether the logger sent or received what a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Sent,
    Received,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::Sent => "sent",
            Dir::Received => "received",
        }
    }
}

/// Who logs a record.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Node {
        node: &'a NodeId,
        addr: &'a str,
    },
    Participant {
        name: &'a str,
        /// Empty until the Welcome told it.
        id: &'a str,
        /// The node it talks to: its id (empty until a Welcome told it) and
        /// the address it dialled.
        node: Option<&'a NodeId>,
        node_addr: &'a str,
    },
}

/// One record's fields beyond who logged it. Unset fields are left out.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub call: Call,
    pub dir: Dir,
    /// On a node: the participant a client call or delivery is about.
    pub participant: Option<&'a str>,
    pub participant_id: Option<&'a str>,
    /// The other node of a mesh call.
    pub peer: Option<&'a NodeId>,
    pub peer_addr: Option<&'a str>,
    pub event: Option<&'a Event>,
    /// The Lamport time the request or reply carried (on a request a
    /// participant sends: the time it ticked to).
    pub lamport_carried: Option<u64>,
    pub lamport_before: Option<u64>,
    pub lamport_after: Option<u64>,
    /// What a relay acknowledgement says is held, as `origin:generation:seq`
    /// marks joined by `,`.
    pub held: Option<&'a str>,
}

impl<'a> Record<'a> {
    pub fn new(call: Call, dir: Dir) -> Self {
        Self {
            call,
            dir,
            participant: None,
            participant_id: None,
            peer: None,
            peer_addr: None,
            event: None,
            lamport_carried: None,
            lamport_before: None,
            lamport_after: None,
            held: None,
        }
    }

    /// The Lamport clock before and after the rule.
    pub fn clock(self, before: u64, after: u64) -> Self {
        Self {
            lamport_before: Some(before),
            lamport_after: Some(after),
            ..self
        }
    }

    pub fn event(self, event: &'a Event) -> Self {
        Self {
            event: Some(event),
            ..self
        }
    }

    /// The participant an event or call is about, on a node.
    pub fn participant(self, name: &'a str, id: &'a str) -> Self {
        Self {
            participant: Some(name),
            participant_id: Some(id),
            ..self
        }
    }

    /// The participant a delivery is for, on a node.
    pub fn participant_id(self, id: &'a str) -> Self {
        Self {
            participant_id: Some(id),
            ..self
        }
    }

    pub fn peer(self, peer: Option<&'a NodeId>, addr: Option<&'a str>) -> Self {
        Self {
            peer,
            peer_addr: addr,
            ..self
        }
    }

    pub fn held(self, held: &'a str) -> Self {
        Self {
            held: Some(held),
            ..self
        }
    }

    pub fn carried(self, lamport: u64) -> Self {
        Self {
            lamport_carried: Some(lamport),
            ..self
        }
    }
}

/// An event's id as records write it: `origin:generation:seq`.
pub struct EventRef<'a>(pub &'a Event);

impl fmt::Display for EventRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.0.id.as_ref();
        let origin = id.and_then(|i| i.origin.as_ref());
        write!(
            f,
            "{}:{}:{}",
            origin.map_or("", |o| o.id.as_str()),
            origin.map_or(0, |o| o.generation),
            id.map_or(0, |i| i.seq)
        )
    }
}

/// Marks (`origin:generation:seq`) joined by `,`.
pub fn marks(marks: &[crate::proto::SeqMark]) -> String {
    marks
        .iter()
        .map(|m| {
            let origin = m.origin.as_ref();
            format!(
                "{}:{}:{}",
                origin.map_or("", |o| o.id.as_str()),
                origin.map_or(0, |o| o.generation),
                m.seq
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn kind(event: &Event) -> &'static str {
    match event.kind() {
        EventKind::Joined => "joined",
        EventKind::Message => "message",
        EventKind::Left => "left",
        EventKind::Moved => "moved",
        EventKind::Unspecified => "unspecified",
    }
}

macro_rules! emit {
    ($level:expr, $message:literal, $who:expr, $r:expr) => {{
        let r = $r;
        let (role, node, generation, node_addr, name, id) = match $who {
            Who::Node { node, addr } => (
                "node",
                Some(node.id.as_str()),
                Some(node.generation),
                addr,
                None,
                None,
            ),
            Who::Participant {
                name,
                id,
                node,
                node_addr,
            } => (
                "participant",
                node.map(|n| n.id.as_str()),
                node.map(|n| n.generation),
                node_addr,
                Some(name),
                // Not known yet: left out rather than empty.
                Some(id).filter(|id| !id.is_empty()),
            ),
        };
        tracing::event!(
            target: TARGET,
            $level,
            role,
            node,
            generation,
            node_addr = Some(node_addr).filter(|a| !a.is_empty()),
            participant = name.or(r.participant),
            participant_id = id.or(r.participant_id),
            call = r.call.as_str(),
            dir = r.dir.as_str(),
            peer = r.peer.map(|p| p.id.as_str()),
            peer_generation = r.peer.map(|p| p.generation),
            peer_addr = r.peer_addr,
            event = r.event.map(|e| tracing::field::display(EventRef(e))),
            kind = r.event.map(kind),
            event_lamport = r.event.map(|e| e.lamport),
            lamport_carried = r.lamport_carried,
            lamport_before = r.lamport_before,
            lamport_after = r.lamport_after,
            held = r.held,
            $message
        );
    }};
}

/// Logs a service call (or one event of a relay batch) at info.
pub fn rpc(who: Who<'_>, record: Record<'_>) {
    emit!(tracing::Level::INFO, "rpc", who, record);
}

/// Logs a frequent mesh record (acknowledgements, membership pushes) at
/// debug.
pub fn rpc_debug(who: Who<'_>, record: Record<'_>) {
    emit!(tracing::Level::DEBUG, "rpc", who, record);
}

/// Logs an event on a Join stream at info: what a participant receives.
pub fn event(who: Who<'_>, record: Record<'_>) {
    emit!(tracing::Level::INFO, "event", who, record);
}

/// Logs an event handed to one local session at debug: on a node, one
/// line per participant per event would flood the info log.
pub fn event_debug(who: Who<'_>, record: Record<'_>) {
    emit!(tracing::Level::DEBUG, "event", who, record);
}

/// Whether records at info level would be written (so callers skip
/// gathering what only they need).
pub fn info_enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Whether records at debug level would be written (so callers skip
/// building what only they need).
pub fn debug_enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// Logs an event this node stamped (whatever caused it: a request, whose
/// `rpc` record has the clock, or the node itself, announcing a participant
/// as left).
pub fn stamp(node: &NodeId, addr: &str, event: &Event) {
    tracing::info!(
        target: TARGET,
        role = "node",
        node = node.id.as_str(),
        generation = node.generation,
        node_addr = addr,
        participant = event.participant_name.as_str(),
        participant_id = event.participant_id.as_str(),
        event = %EventRef(event),
        kind = kind(event),
        event_lamport = event.lamport,
        "stamp"
    );
}

/// Logs a node's start: its id, address and the boot member it joins
/// through (none for the first node).
pub fn start(node: &NodeId, addr: &str, boot: Option<&str>) {
    tracing::info!(
        target: TARGET,
        role = "node",
        node = node.id.as_str(),
        generation = node.generation,
        node_addr = addr,
        boot,
        "start"
    );
}
