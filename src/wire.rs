//! Join-stream frames assembled from parts encoded once per node.
//!
//! A node sends every event to each of its participants. Encoding the event
//! once per recipient would make fan-out cost grow with the room; instead the
//! node encodes each event once, as the bytes of one `EventBatch.events`
//! field, and a participant's frame is those parts behind a short header.
//! [`EncodedFrame`] is what the server's Join stream yields: a
//! `prost::Message` whose encoding is exactly a `JoinFrame`, so clients
//! decode it with the ordinary generated type.

use std::sync::Arc;

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use crate::proto::{Event, EventKind, JoinFrame, RelayFrame, SessionGrant};

/// Field numbers of `JoinFrame.events` and `EventBatch.events`.
const JOIN_FRAME_EVENTS: u32 = 2;
const EVENT_BATCH_EVENTS: u32 = 1;
/// Field numbers of `Event.id`, `Event.lamport` and `Event.kind`.
const EVENT_ID: u32 = 1;
const EVENT_LAMPORT: u32 = 2;
const EVENT_KIND: u32 = 3;

/// One `Event`, encoded as a length-delimited `EventBatch.events` field.
pub fn event_field(event: &Event) -> Bytes {
    let len = event.encoded_len();
    let mut buf = Vec::with_capacity(len + 1 + encoded_len_varint(len as u64));
    encode_key(EVENT_BATCH_EVENTS, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    event.encode_raw(&mut buf);
    Bytes::from(buf)
}

/// One `Event` as participants get it, without its dependencies (which only
/// nodes use), encoded as a length-delimited `EventBatch.events` field.
pub fn session_field(event: &Event) -> Bytes {
    let len = encoded_len_without_deps(event);
    let mut buf = Vec::with_capacity(len + 1 + encoded_len_varint(len as u64));
    encode_key(EVENT_BATCH_EVENTS, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    encode_without_deps(event, &mut buf);
    Bytes::from(buf)
}

/// `event`'s fields but `deps`, written as prost writes an `Event` (field
/// by field in number order, defaults left out): the encoding of the event
/// with no dependencies, without copying it to clear them. A test checks
/// it byte for byte against prost's.
fn encode_without_deps(event: &Event, buf: &mut impl BufMut) {
    use prost::encoding::{int32, message, string, uint64};
    if let Some(id) = &event.id {
        message::encode(EVENT_ID, id, buf);
    }
    if event.lamport != 0 {
        uint64::encode(EVENT_LAMPORT, &event.lamport, buf);
    }
    if event.kind != 0 {
        int32::encode(EVENT_KIND, &event.kind, buf);
    }
    for (tag, text) in event_strings(event) {
        if !text.is_empty() {
            string::encode(tag, text, buf);
        }
    }
}

fn encoded_len_without_deps(event: &Event) -> usize {
    use prost::encoding::{int32, message, string, uint64};
    let id = event
        .id
        .as_ref()
        .map_or(0, |id| message::encoded_len(EVENT_ID, id));
    let lamport = match event.lamport {
        0 => 0,
        lamport => uint64::encoded_len(EVENT_LAMPORT, &lamport),
    };
    let kind = match event.kind {
        0 => 0,
        kind => int32::encoded_len(EVENT_KIND, &kind),
    };
    let strings: usize = event_strings(event)
        .iter()
        .filter(|(_, text)| !text.is_empty())
        .map(|(tag, text)| string::encoded_len(*tag, text))
        .sum();
    id + lamport + kind + strings
}

/// `Event`'s string fields with their numbers, in order.
fn event_strings(event: &Event) -> [(u32, &String); 4] {
    [
        (4, &event.participant_name),
        (5, &event.participant_id),
        (6, &event.text),
        (7, &event.publish_id),
    ]
}

/// `event` as participants get it: [`session_field`] for a message, the
/// whole event ([`event_field`]) for anything else.
pub fn participant_field(event: &Event) -> Bytes {
    if event.kind() == EventKind::Message {
        session_field(event)
    } else {
        event_field(event)
    }
}

/// A `JoinFrame`, already encoded in parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedFrame {
    /// For an `events` frame, the key and length of `JoinFrame.events`,
    /// kept here rather than in a part of its own; empty otherwise.
    header: FieldHeader,
    /// The frame's first part (empty for an events frame of several: they
    /// are all in `rest`). A frame of one part allocates nothing more.
    first: Bytes,
    rest: Vec<Bytes>,
    len: usize,
}

/// A length-delimited field's key and length: at most 2 bytes of key (field
/// numbers below 2,048) and 10 of length.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct FieldHeader {
    bytes: [u8; 12],
    len: u8,
}

impl FieldHeader {
    fn new(field: u32, body: usize) -> Self {
        let mut bytes = [0; 12];
        let mut out = &mut bytes[..];
        encode_key(field, WireType::LengthDelimited, &mut out);
        encode_varint(body as u64, &mut out);
        let len = (12 - out.len()) as u8;
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl EncodedFrame {
    /// A frame encoded the ordinary way (Welcome, Gap, Servers).
    pub fn message(frame: &JoinFrame) -> Self {
        let bytes = Bytes::from(frame.encode_to_vec());
        Self {
            header: FieldHeader::default(),
            len: bytes.len(),
            first: bytes,
            rest: Vec::new(),
        }
    }

    /// An `events` frame from parts made by [`event_field`]; `events` is
    /// kept as the frame's parts.
    pub fn events(events: Vec<Bytes>) -> Self {
        let body = events.iter().map(Bytes::len).sum();
        Self::events_of(body, Bytes::new(), events)
    }

    /// An `events` frame of one event, made by [`event_field`].
    pub fn event(event: Bytes) -> Self {
        Self::events_of(event.len(), event, Vec::new())
    }

    /// An `events` frame of `first`, then `rest`: `body` bytes in all.
    fn events_of(body: usize, first: Bytes, rest: Vec<Bytes>) -> Self {
        let header = FieldHeader::new(JOIN_FRAME_EVENTS, body);
        Self {
            len: header.as_slice().len() + body,
            header,
            first,
            rest,
        }
    }
}

impl Message for EncodedFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.header.as_slice());
        buf.put_slice(&self.first);
        for part in &self.rest {
            buf.put_slice(part);
        }
    }

    /// Never used: the server only sends these. Anything decoded is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.header = FieldHeader::default();
        self.first = Bytes::new();
        self.rest.clear();
        self.len = 0;
    }
}

/// An event with its encoding as a repeated `events` field, made once per
/// node and shared by every session ([`session_field`]) or every peer link
/// ([`event_field`]) it goes to (`EventBatch.events` and `RelayBatch.events`
/// are both field 1).
#[derive(Debug, Clone)]
pub struct Wired {
    pub event: Arc<Event>,
    pub field: Bytes,
}

impl Wired {
    /// For peers: the whole event.
    pub fn for_peers(event: Arc<Event>) -> Self {
        let field = event_field(&event);
        Self { event, field }
    }

    /// For participants ([`participant_field`]): a message without its
    /// dependencies (most of what they receive; the Welcome tells what came
    /// before a session); joins and leaves keep theirs, for clients that
    /// still read them.
    pub fn for_sessions(event: Arc<Event>) -> Self {
        let field = participant_field(&event);
        Self { event, field }
    }
}

/// What an outgoing relay link sends: a `RelayFrame`, with a batch's events
/// as their shared encodings rather than re-encoded per peer.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOut {
    Frame(RelayFrame),
    Batch {
        /// Made by [`event_field`].
        events: Vec<Bytes>,
        grants: Vec<SessionGrant>,
        /// `RelayBatch.late`.
        late: bool,
    },
}

impl Default for RelayOut {
    fn default() -> Self {
        RelayOut::Frame(RelayFrame::default())
    }
}

impl RelayOut {
    /// Length of the `RelayBatch` inside a batch frame.
    fn batch_len(events: &[Bytes], grants: &[SessionGrant], late: bool) -> usize {
        let events: usize = events.iter().map(Bytes::len).sum();
        let grants: usize = grants
            .iter()
            .map(|g| {
                let len = g.encoded_len();
                key_len(RELAY_BATCH_GRANTS) + encoded_len_varint(len as u64) + len
            })
            .sum();
        let late = if late {
            key_len(RELAY_BATCH_LATE) + 1
        } else {
            0
        };
        events + grants + late
    }
}

/// Field numbers of `RelayFrame.batch` and `RelayBatch.grants`.
const RELAY_FRAME_BATCH: u32 = 2;
const RELAY_BATCH_GRANTS: u32 = 2;
const RELAY_BATCH_LATE: u32 = 3;

impl Message for RelayOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            RelayOut::Frame(frame) => frame.encode_raw(buf),
            RelayOut::Batch {
                events,
                grants,
                late,
            } => {
                encode_key(RELAY_FRAME_BATCH, WireType::LengthDelimited, buf);
                encode_varint(Self::batch_len(events, grants, *late) as u64, buf);
                for event in events {
                    buf.put_slice(event);
                }
                for grant in grants {
                    prost::encoding::message::encode(RELAY_BATCH_GRANTS, grant, buf);
                }
                if *late {
                    prost::encoding::bool::encode(RELAY_BATCH_LATE, late, buf);
                }
            }
        }
    }

    /// Never used: links only send these. Anything decoded is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            RelayOut::Frame(frame) => frame.encoded_len(),
            RelayOut::Batch {
                events,
                grants,
                late,
            } => {
                let len = Self::batch_len(events, grants, *late);
                key_len(RELAY_FRAME_BATCH) + encoded_len_varint(len as u64) + len
            }
        }
    }

    fn clear(&mut self) {
        *self = RelayOut::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        EventBatch, EventId, EventKind, NodeId, RelayBatch, SeqMark, Welcome, join_frame,
        relay_frame,
    };

    fn event(seq: u64, text: &str) -> Event {
        Event {
            id: Some(EventId {
                origin: Some(NodeId {
                    id: "n".into(),
                    generation: 7,
                }),
                seq,
            }),
            lamport: seq * 3,
            kind: EventKind::Message as i32,
            participant_name: "Zoë".into(),
            participant_id: "p".into(),
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_events_frame_decodes_as_the_join_frame_it_stands_for() {
        // Bodies whose length takes one, two and three bytes.
        for count in [0, 1, 2, 200] {
            let events: Vec<Event> = (1..=count)
                .map(|seq| match seq % 2 {
                    1 => event(seq, "hi"),
                    _ => event(seq, &"😀".repeat(128)),
                })
                .collect();
            let mut frames = vec![EncodedFrame::events(
                events.iter().map(event_field).collect(),
            )];
            if let [one] = events.as_slice() {
                frames.push(EncodedFrame::event(event_field(one)));
            }
            for frame in frames {
                let bytes = frame.encode_to_vec();
                assert_eq!(bytes.len(), frame.encoded_len(), "{count} events");
                let expected = JoinFrame {
                    frame: Some(join_frame::Frame::Events(EventBatch {
                        events: events.clone(),
                    })),
                };
                assert_eq!(JoinFrame::decode(bytes.as_slice()).unwrap(), expected);
                assert_eq!(
                    bytes,
                    expected.encode_to_vec(),
                    "{count} events, byte for byte"
                );
            }
        }
    }

    #[test]
    fn participants_get_events_without_their_dependencies() {
        let mut full = event(3, "hi");
        full.publish_id = "x".into();
        full.deps = vec![
            SeqMark {
                origin: Some(NodeId {
                    id: "a".into(),
                    generation: 1,
                }),
                seq: 9,
            },
            SeqMark {
                origin: Some(NodeId {
                    id: "b".into(),
                    generation: 300,
                }),
                seq: 100_000,
            },
        ];
        let without = Event {
            deps: Vec::new(),
            ..full.clone()
        };
        let field = session_field(&full);
        let batch = EventBatch::decode(field.as_ref()).unwrap();
        assert_eq!(batch.events, vec![without.clone()]);
        assert_eq!(field, event_field(&without), "byte for byte");
        // Fields left at their defaults, one at a time and all together.
        let defaults = [
            Event {
                id: None,
                ..full.clone()
            },
            Event {
                lamport: 0,
                ..full.clone()
            },
            Event {
                kind: 0,
                ..full.clone()
            },
            Event {
                participant_name: String::new(),
                ..full.clone()
            },
            Event {
                participant_id: String::new(),
                ..full.clone()
            },
            Event {
                text: String::new(),
                ..full.clone()
            },
            Event {
                publish_id: String::new(),
                ..full.clone()
            },
            Event {
                deps: full.deps.clone(),
                ..Event::default()
            },
            Event {
                lamport: u64::MAX,
                kind: -1,
                text: "x".repeat(300),
                ..full.clone()
            },
        ];
        for case in defaults {
            let expected = event_field(&Event {
                deps: Vec::new(),
                ..case.clone()
            });
            assert_eq!(session_field(&case), expected, "{case:?}");
        }
        assert!(event_field(&full).len() > field.len());
        assert_eq!(participant_field(&full), field);
        // Joins and leaves keep their dependencies.
        let join = Event {
            kind: EventKind::Joined as i32,
            ..full.clone()
        };
        assert_eq!(participant_field(&join), event_field(&join));
    }

    #[test]
    fn a_relay_batch_decodes_as_the_relay_frame_it_stands_for() {
        let events = vec![event(1, "hi"), event(2, &"😀".repeat(128))];
        let grants = vec![crate::core::tokens::grant_of("p", "t")];
        for late in [false, true] {
            let out = RelayOut::Batch {
                events: events.iter().map(event_field).collect(),
                grants: grants.clone(),
                late,
            };
            let bytes = out.encode_to_vec();
            assert_eq!(bytes.len(), out.encoded_len());
            let expected = RelayFrame {
                frame: Some(relay_frame::Frame::Batch(RelayBatch {
                    events: events.clone(),
                    grants: grants.clone(),
                    late,
                })),
            };
            assert_eq!(RelayFrame::decode(bytes.as_slice()).unwrap(), expected);
            assert_eq!(bytes, expected.encode_to_vec(), "byte for byte");
        }

        let heartbeat = RelayFrame {
            frame: Some(relay_frame::Frame::Heartbeat(Default::default())),
        };
        let bytes = RelayOut::Frame(heartbeat.clone()).encode_to_vec();
        assert_eq!(RelayFrame::decode(bytes.as_slice()).unwrap(), heartbeat);
    }

    #[test]
    fn other_frames_are_passed_through() {
        let welcome = JoinFrame {
            frame: Some(join_frame::Frame::Welcome(Welcome {
                participant_id: "p".into(),
                ..Default::default()
            })),
        };
        let bytes = EncodedFrame::message(&welcome).encode_to_vec();
        assert_eq!(JoinFrame::decode(bytes.as_slice()).unwrap(), welcome);
    }
}
