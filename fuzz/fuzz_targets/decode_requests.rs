//! Arbitrary bytes decoded as every request a node serves (`JoinRequest`
//! through the Join call's own framing and decoder, `edge::join_request`;
//! the others through the servers' codec, `codec::decode`) and as every mesh
//! message a node receives from a peer or a client receives from a node.
//! What must hold: decoding never panics, and a message that does not decode
//! is refused with `INVALID_ARGUMENT` (or `UNIMPLEMENTED` for a compressed
//! Join); whatever decodes passes or fails the validation functions of
//! `core::validate` without panicking; it re-encodes to bytes that decode to
//! the same message; and an event's once-per-node encodings (`wire`) decode
//! as the event, without its dependencies for participants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::Code;

use chitty::codec::decode;
use chitty::core::validate;
use chitty::proto::{
    Event, EventBatch, JoinFrame, JoinRequest, LeaveRequest, ListParticipantsRequest,
    ListServersRequest, Member, Participant, PublishRequest, RelayAck, RelayFrame, Resume,
    ServerJoinReply, ServerJoinRequest, SessionGrant, UpdateServersReply, UpdateServersRequest,
    join_frame, relay_frame,
};

/// Node clocks to check request clocks against.
const NOWS: [u64; 4] = [0, 1 << 20, validate::MAX_REQUEST_LAMPORT, u64::MAX];

/// Decodes `data` as `M` through the servers' codec; a message that decodes
/// must survive a round trip.
fn decoded<M: Message + Default + PartialEq>(data: &[u8]) -> Option<M> {
    match decode::<M>(data) {
        Ok(m) => {
            let again =
                M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
            assert!(again == m, "a message changed on a round trip");
            Some(m)
        }
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            None
        }
    }
}

fn text(s: &str) {
    let shown = validate::escaped(s);
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}

fn clock(lamport: u64) {
    for now in NOWS {
        let _ = validate::request_lamport(lamport, now);
    }
}

fn resume(r: &Resume) {
    let _ = validate::token("Resume.participant_id", &r.participant_id);
    let _ = validate::token("Resume.session_token", &r.session_token);
    let _ = validate::seen_and_nodes(r.seen.len(), r.unanswered_at.len(), r.known_nodes.len());
}

fn join(req: &JoinRequest) {
    let _ = validate::name(&req.name);
    text(&req.name);
    clock(req.lamport);
    if let Some(r) = &req.resume {
        resume(r);
    }
    if let Some(r) = &req.rejoin {
        let _ = validate::seen_and_nodes(r.seen.len(), r.unanswered_at.len(), r.known_nodes.len());
    }
}

/// An event as a node takes it from a peer, and its encodings for peers and
/// participants.
fn event(e: &Event) {
    let _ = validate::relayed_event(e);
    text(&e.text);
    text(&e.participant_name);
    let whole = EventBatch::decode(chitty::wire::event_field(e).as_ref()).expect("event_field");
    assert_eq!(whole.events.as_slice(), std::slice::from_ref(e));
    let session =
        EventBatch::decode(chitty::wire::session_field(e).as_ref()).expect("session_field");
    let without = Event {
        deps: Vec::new(),
        ..e.clone()
    };
    assert_eq!(session.events, vec![without]);
}

fn members(ms: &[Member]) {
    for m in ms {
        text(&m.addr);
    }
}

fn grants(gs: &[SessionGrant]) {
    for g in gs {
        let _ = validate::token("SessionGrant.participant_id", &g.participant_id);
    }
}

fn participants(ps: &[Participant]) {
    for p in ps {
        let _ = validate::name(&p.name);
        text(&p.name);
    }
}

fuzz_target!(|data: &[u8]| {
    // The Join call: the body as it arrives (framing included), and the
    // same bytes as the one message of a well-framed body.
    if let Err(status) = chitty::edge::join_request(data) {
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::Unimplemented),
            "{status:?}"
        );
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
    framed.extend_from_slice(data);
    match chitty::edge::join_request(&framed) {
        Ok(req) => {
            assert_eq!(Some(&req), decoded::<JoinRequest>(data).as_ref());
            join(&req);
        }
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
    }

    // The other requests participants send.
    if let Some(req) = decoded::<PublishRequest>(data) {
        let _ = validate::token("PublishRequest.session_token", &req.session_token);
        let _ = validate::publish_id(&req.publish_id);
        let _ = validate::message(&req.text);
        text(&req.text);
        clock(req.lamport);
    }
    if let Some(req) = decoded::<LeaveRequest>(data) {
        let _ = validate::token("LeaveRequest.session_token", &req.session_token);
        clock(req.lamport);
    }
    let _ = decoded::<ListParticipantsRequest>(data);
    let _ = decoded::<ListServersRequest>(data);

    // The mesh: what a node serves and what it reads back from a peer.
    if let Some(frame) = decoded::<RelayFrame>(data) {
        match frame.frame {
            Some(relay_frame::Frame::Batch(batch)) => {
                batch.events.iter().for_each(event);
                grants(&batch.grants);
            }
            Some(relay_frame::Frame::Heartbeat(hb)) => members(&hb.members),
            Some(relay_frame::Frame::Hello(m)) => members(&[m]),
            Some(relay_frame::Frame::Skip(gap)) => text(&gap.reason),
            Some(relay_frame::Frame::NeverHeld(_)) | None => {}
        }
    }
    if let Some(req) = decoded::<ServerJoinRequest>(data) {
        members(req.member.as_slice());
    }
    if let Some(req) = decoded::<UpdateServersRequest>(data) {
        members(&req.members);
    }
    if let Some(reply) = decoded::<UpdateServersReply>(data) {
        members(&reply.members);
    }
    if let Some(reply) = decoded::<ServerJoinReply>(data) {
        members(&reply.members);
        participants(&reply.participants);
        grants(&reply.grants);
    }
    let _ = decoded::<RelayAck>(data);

    // What a client reads from a node.
    if let Some(frame) = decoded::<JoinFrame>(data) {
        match frame.frame {
            Some(join_frame::Frame::Events(batch)) => batch.events.iter().for_each(event),
            Some(join_frame::Frame::Welcome(w)) => {
                let _ = validate::token("Welcome.participant_id", &w.participant_id);
            }
            Some(join_frame::Frame::Gap(gap)) => text(&gap.reason),
            _ => {}
        }
    }
});
