//! How large a gRPC message may be, for servers and clients alike (so each
//! side can use the bounds without depending on the other), and the answer
//! to a request over them.
//!
//! The bounds are what the API needs, with room to spare:
//! * A participant's request is small: a `PublishRequest` is a token, at most
//!   128 characters (512 bytes) of text, a publish id and a clock, well
//!   under 1 KiB; a `JoinRequest` with a `Resume` or `Rejoin` carries one
//!   `SeqMark` (about 45 bytes) per origin the participant has seen and one
//!   `NodeId` (about 35 bytes) per node its unanswered publish went to. 64
//!   KiB holds such a request for more than 1,000 origins (every node
//!   incarnation of a cluster's life is one).
//! * What a participant receives can be larger: `ListParticipants` lists the
//!   whole room (about 200 bytes a participant), a Join stream frame at most
//!   a few hundred KiB of events. 16 MiB holds a room of 80,000.
//! * Between nodes, a `ServerJoinReply` carries every live participant of
//!   the cluster with its session grant and the id of its latest message
//!   (at most about 450 bytes each: see the tests below), and a
//!   `RelayBatch` up to 512 events (at most a few KiB each, most of it one
//!   dependency mark per origin). 64 MiB holds a snapshot of 150,000
//!   participants.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};

/// The largest request message a participant may send (`ChittyChat`).
pub const CLIENT_MAX_REQUEST: usize = 64 * 1024;
/// The largest response message a node sends a participant, and the largest
/// a client accepts.
pub const CLIENT_MAX_RESPONSE: usize = 16 << 20;
/// The largest message between nodes (`ServerMesh`), either way.
pub const MESH_MAX_MESSAGE: usize = 64 << 20;

/// What tonic's decoder says of a message over its limit (with
/// `OUT_OF_RANGE`).
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// `status` as a participant should see it: tonic refuses a message over the
/// decoding limit with `OUT_OF_RANGE`; that becomes `RESOURCE_EXHAUSTED`,
/// saying the size and the limit. Any other status is returned unchanged.
pub fn oversize(status: Status) -> Status {
    if status.code() != Code::OutOfRange || !status.message().contains(TONIC_TOO_LARGE) {
        return status;
    }
    // "... found N bytes, the limit is: M bytes"
    let number_after = |key: &str| -> Option<u64> {
        let rest = &status.message()[status.message().find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    match (number_after("found "), number_after("limit is: ")) {
        (Some(found), Some(limit)) => too_large(found as usize, limit as usize),
        _ => Status::resource_exhausted(format!("message too large: {}", status.message())),
    }
}

/// The status of a message of `len` bytes over a `limit`.
pub fn too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "message too large: {len} bytes, the limit is {limit} bytes"
    ))
}

/// `RESOURCE_EXHAUSTED` if `request` is over [`CLIENT_MAX_REQUEST`]: what a
/// client checks before sending, so it neither sends what the node would
/// refuse nor gets tonic's own encoding error for it.
pub fn check_request(request: &impl prost::Message) -> Result<(), Status> {
    let len = request.encoded_len();
    if len > CLIENT_MAX_REQUEST {
        return Err(too_large(len, CLIENT_MAX_REQUEST));
    }
    Ok(())
}

/// Wraps every service of a server so that a request refused for its size
/// before any handler ran (a trailers-only response) is answered with
/// [`oversize`]'s status. Streams read by a handler map their errors with
/// [`oversize`] themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

/// See [`OversizeLayer`].
#[derive(Debug, Clone)]
pub struct Oversize<S>(S);

impl<S, Req, B> tower::Service<Req> for Oversize<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let call = self.0.call(req);
        Box::pin(async move {
            let mut response = call.await?;
            let headers = response.headers_mut();
            if let Some(status) = Status::from_header_map(headers)
                && status.code() == Code::OutOfRange
            {
                let mapped = oversize(status);
                if mapped.code() != Code::OutOfRange {
                    headers.remove(Status::GRPC_STATUS);
                    headers.remove(Status::GRPC_MESSAGE);
                    headers.remove(Status::GRPC_STATUS_DETAILS);
                    let _ = mapped.add_header(headers);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::{
        Event, EventId, EventKind, NodeId, Participant, RelayBatch, SeqMark, ServerJoinReply,
        SessionGrant,
    };

    fn node_id(i: usize) -> NodeId {
        // Ids are 16 hex digits, generations milliseconds since the epoch.
        NodeId {
            id: format!("{i:016x}"),
            generation: u64::MAX,
        }
    }

    /// A participant with every field as large as validation lets it be: a
    /// name of 32 four-byte characters, UUIDs, a 64-character token.
    fn largest_participant(i: usize) -> (Participant, SessionGrant) {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
        (
            Participant {
                id: id.clone(),
                name: "😀".repeat(32),
                node: Some(node_id(i % 64)),
            },
            SessionGrant {
                participant_id: id,
                token_digest: vec![0xff; 32],
            },
        )
    }

    #[test]
    fn a_snapshot_of_ten_thousand_participants_is_well_within_the_mesh_limit() {
        let (participants, grants): (Vec<_>, Vec<_>) = (0..10_000).map(largest_participant).unzip();
        let last_messages = participants
            .iter()
            .map(|p| Event {
                id: Some(EventId {
                    origin: Some(node_id(1)),
                    seq: u64::MAX,
                }),
                lamport: u64::MAX,
                kind: EventKind::Message as i32,
                participant_id: p.id.clone(),
                publish_id: "0".repeat(36),
                ..Default::default()
            })
            .collect();
        let reply = ServerJoinReply {
            participants,
            grants,
            last_messages,
            delivered: (0..64)
                .map(|i| SeqMark {
                    origin: Some(node_id(i)),
                    seq: u64::MAX,
                })
                .collect(),
            ..Default::default()
        };
        let len = reply.encoded_len();
        assert!(len < 10_000 * 450, "{len} bytes");
        assert!(len * 15 < MESH_MAX_MESSAGE, "{len} bytes");
    }

    #[test]
    fn a_relay_batch_of_512_of_the_largest_events_fits_the_mesh_limit() {
        let event = Event {
            id: Some(EventId {
                origin: Some(node_id(1)),
                seq: u64::MAX,
            }),
            lamport: u64::MAX,
            kind: EventKind::Message as i32,
            participant_name: "😀".repeat(32),
            participant_id: "0".repeat(36),
            text: "😀".repeat(128),
            publish_id: "0".repeat(36),
            // One mark per origin: a cluster with 256 incarnations.
            deps: (0..256)
                .map(|i| SeqMark {
                    origin: Some(node_id(i)),
                    seq: u64::MAX,
                })
                .collect(),
        };
        let batch = RelayBatch {
            events: vec![event; 512],
            grants: (0..512).map(|i| largest_participant(i).1).collect(),
            late: true,
        };
        let len = batch.encoded_len();
        assert!(len * 2 < MESH_MAX_MESSAGE, "{len} bytes");
    }

    #[test]
    fn a_resume_across_a_thousand_origins_fits_the_client_limit() {
        let resume = crate::proto::Resume {
            participant_id: "0".repeat(36),
            session_token: "f".repeat(64),
            seen: (0..1000)
                .map(|i| SeqMark {
                    origin: Some(node_id(i)),
                    seq: u64::MAX,
                })
                .collect(),
            unanswered_at: (0..64).map(node_id).collect(),
            known_nodes: (64..128).map(node_id).collect(),
        };
        let join = crate::proto::JoinRequest {
            name: "😀".repeat(32),
            lamport: u64::MAX,
            resume: Some(resume),
            rejoin: None,
            recent: u32::MAX,
        };
        assert!(
            join.encoded_len() < CLIENT_MAX_REQUEST,
            "{}",
            join.encoded_len()
        );
    }

    #[test]
    fn tonics_refusal_of_a_large_message_becomes_resource_exhausted_naming_the_limit() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 5000017 bytes, the limit is: 65536 bytes",
        );
        let mapped = oversize(tonic);
        assert_eq!(mapped.code(), Code::ResourceExhausted);
        assert_eq!(
            mapped.message(),
            "message too large: 5000017 bytes, the limit is 65536 bytes"
        );
        let other = oversize(Status::out_of_range("something else"));
        assert_eq!(other.code(), Code::OutOfRange);
        assert_eq!(oversize(Status::ok("")).code(), Code::Ok);
    }
}
