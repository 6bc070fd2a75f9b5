//! Hostile bytes against the request decoders and the node core: seeded
//! mutations of valid client requests and mesh frames (bit flips, cut and
//! spliced bytes, extreme varints), decoded as a node decodes them and, when
//! they decode, handed to a node core with a participant and a peer. Nothing
//! may panic, and afterwards the node still serves its participant.
//!
//! A bounded stand-in for a coverage-guided fuzzer (cargo-fuzz needs a
//! nightly toolchain): `CHITTY_FUZZ_ITERATIONS=1000000` runs longer,
//! `CHITTY_FUZZ_SEED=N` replays one seed, which a failure prints.

use std::time::Duration;

use tokio::time::Instant;

use chitty::core::chat::CoreLimits;
use chitty::core::membership::member;
use chitty::core::node::{Joiner, NodeCore, Output, Reply, Timing};
use chitty::core::rng::Rng;
use chitty::core::validate;
use chitty::proto::{
    Event, EventId, EventKind, Gap, GapRange, Heartbeat, JoinRequest, LeaveRequest, MemberState,
    NeverHeld, NodeId, Participant, PublishRequest, Rejoin, RelayAck, RelayBatch, RelayFrame,
    Resume, SeqMark, ServerJoinReply, ServerJoinRequest, UpdateServersRequest, relay_frame,
};
use prost::Message;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn node(id: &str) -> NodeId {
    NodeId {
        id: id.into(),
        generation: 1,
    }
}

fn mark(id: &str, seq: u64) -> SeqMark {
    SeqMark {
        origin: Some(node(id)),
        seq,
    }
}

/// A participant joining as `name`, with id and token derived from it.
fn joiner(name: &str) -> Joiner<'_> {
    Joiner {
        name,
        participant_id: format!("id-{name}"),
        token: format!("tok-{name}"),
        rejoin: None,
        recent: 0,
    }
}

/// A node `n1` with a live peer `n2`, and participant Ann on it.
fn serving(now: Instant) -> NodeCore {
    let mut core = NodeCore::new(
        now,
        node("n1"),
        "n1:1".into(),
        Timing::default(),
        CoreLimits::default(),
    );
    // As the node process does: every process draws a fresh id.
    core.never_reuse_ids();
    core.merge_members(now, &[member(node("n2"), "n2:1", MemberState::Alive, 1)]);
    core.link_up(now, &node("n2"), RelayAck::default());
    core.join(now, 1, joiner("Ann"), 1);
    core.take_outputs();
    core
}

/// The valid messages mutations start from.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let event = |seq: u64, kind: EventKind, text: &str| Event {
        id: Some(EventId {
            origin: Some(node("n2")),
            seq,
        }),
        lamport: 10 + seq,
        kind: kind as i32,
        participant_id: "id-Bo".into(),
        participant_name: "Bo".into(),
        text: text.into(),
        deps: vec![mark("n1", 1)],
        publish_id: "9f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f".into(),
    };
    let members = vec![
        member(node("n2"), "n2:1", MemberState::Alive, 7),
        member(node("n1"), "n1:1", MemberState::Alive, 3),
    ];
    vec![
        (
            "JoinRequest",
            JoinRequest {
                name: "Cy".into(),
                lamport: 5,
                resume: Some(Resume {
                    participant_id: "id-Ann".into(),
                    session_token: "tok-Ann".into(),
                    seen: vec![mark("n1", 1), mark("n2", 3)],
                    unanswered_at: vec![node("n2")],
                    known_nodes: vec![node("n2"), node("n3")],
                }),
                rejoin: Some(Rejoin {
                    seen: vec![mark("n2", 2)],
                    unanswered_at: vec![node("n2")],
                    known_nodes: vec![node("n3")],
                }),
                recent: 0,
            }
            .encode_to_vec(),
        ),
        (
            "PublishRequest",
            PublishRequest {
                session_token: "tok-Ann".into(),
                text: "hello there".into(),
                lamport: 9,
                publish_id: "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b".into(),
            }
            .encode_to_vec(),
        ),
        (
            "LeaveRequest",
            LeaveRequest {
                session_token: "tok-Ann".into(),
                lamport: 11,
            }
            .encode_to_vec(),
        ),
        (
            "RelayFrame",
            RelayFrame {
                frame: Some(relay_frame::Frame::Batch(RelayBatch {
                    events: vec![
                        event(1, EventKind::Joined, "Participant Bo joined"),
                        event(2, EventKind::Message, "hi"),
                        event(3, EventKind::Left, "Participant Bo left"),
                    ],
                    grants: vec![chitty::core::tokens::grant_of("id-Bo", "tok-Bo")],
                    late: true,
                })),
            }
            .encode_to_vec(),
        ),
        (
            "RelayFrame",
            RelayFrame {
                frame: Some(relay_frame::Frame::Heartbeat(Heartbeat {
                    lamport: 40,
                    members: members.clone(),
                })),
            }
            .encode_to_vec(),
        ),
        (
            "RelayFrame",
            RelayFrame {
                frame: Some(relay_frame::Frame::Skip(Gap {
                    reason: "lost".into(),
                    ranges: vec![GapRange {
                        origin: Some(node("n2")),
                        from_seq: 1,
                        to_seq: 5,
                    }],
                })),
            }
            .encode_to_vec(),
        ),
        (
            "RelayFrame",
            RelayFrame {
                frame: Some(relay_frame::Frame::NeverHeld(NeverHeld {
                    upto: vec![mark("n2", 4)],
                })),
            }
            .encode_to_vec(),
        ),
        (
            "UpdateServersRequest",
            UpdateServersRequest {
                members: members.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "ServerJoinRequest",
            ServerJoinRequest {
                member: Some(member(node("n3"), "n3:1", MemberState::Alive, 1)),
            }
            .encode_to_vec(),
        ),
        (
            "ServerJoinReply",
            ServerJoinReply {
                members,
                participants: vec![Participant {
                    id: "id-Bo".into(),
                    name: "Bo".into(),
                    node: Some(node("n2")),
                }],
                lamport: 50,
                delivered: vec![mark("n2", 9)],
                grants: vec![chitty::core::tokens::grant_of("id-Bo", "tok-Bo")],
                last_messages: vec![event(8, EventKind::Message, "")],
            }
            .encode_to_vec(),
        ),
    ]
}

/// One mutation of `bytes`.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let len = bytes.len().max(1);
    match rng.below(7) {
        0 => {
            let i = rng.below(len);
            if let Some(b) = bytes.get_mut(i) {
                *b ^= 1 << rng.below(8);
            }
        }
        1 => bytes.truncate(rng.below(len)),
        2 => {
            let i = rng.below(len).min(bytes.len());
            let n = 1 + rng.below(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(i..i, junk);
        }
        3 => {
            let i = rng.below(len).min(bytes.len());
            let end = (i + 1 + rng.below(8)).min(bytes.len());
            bytes.drain(i..end);
        }
        // An extreme varint (2^64-1) or an overlong length prefix.
        4 => {
            let i = rng.below(len).min(bytes.len());
            bytes.splice(i..i, [0xff; 9].into_iter().chain([0x01]));
        }
        5 => {
            let i = rng.below(len);
            if let Some(b) = bytes.get_mut(i) {
                *b = [0x00, 0x7f, 0x80, 0xff, 0xc0, 0xfe][rng.below(6)];
            }
        }
        _ => {
            // Invalid UTF-8 somewhere a string may be.
            let i = rng.below(len);
            if let Some(b) = bytes.get_mut(i) {
                *b = 0xc3;
            }
        }
    }
}

/// Decodes `bytes` as `kind` and, when it decodes, hands it to `core`.
fn apply(core: &mut NodeCore, now: Instant, request: u64, kind: &str, bytes: &[u8]) {
    match kind {
        "JoinRequest" => {
            if let Ok(req) = JoinRequest::decode(bytes) {
                match req.resume {
                    Some(resume) => core.resume(now, request, resume, req.lamport),
                    None => {
                        let joiner = Joiner {
                            name: &req.name,
                            participant_id: format!("id-{request}"),
                            token: format!("tok-{request}"),
                            rejoin: req.rejoin,
                            recent: 0,
                        };
                        core.join(now, request, joiner, req.lamport);
                    }
                }
            }
        }
        "PublishRequest" => {
            if let Ok(req) = PublishRequest::decode(bytes) {
                core.publish(
                    now,
                    request,
                    &req.session_token,
                    &req.text,
                    req.lamport,
                    &req.publish_id,
                );
            }
        }
        "LeaveRequest" => {
            if let Ok(req) = LeaveRequest::decode(bytes) {
                core.leave(now, request, &req.session_token, req.lamport);
            }
        }
        "RelayFrame" => {
            if let Ok(frame) = RelayFrame::decode(bytes) {
                let _ = core.on_relay(now, &node("n2"), frame);
            }
        }
        "UpdateServersRequest" => {
            if let Ok(req) = UpdateServersRequest::decode(bytes) {
                core.merge_members(now, &req.members);
            }
        }
        "ServerJoinRequest" => {
            if let Ok(req) = ServerJoinRequest::decode(bytes)
                && let Some(m) = req.member
            {
                let _ = core.admit(now, m);
            }
        }
        "ServerJoinReply" => {
            if let Ok(reply) = ServerJoinReply::decode(bytes) {
                // Only a node that is joining takes a snapshot: a fresh one.
                let mut joiner = NodeCore::new(
                    now,
                    node("n9"),
                    "n9:1".into(),
                    Timing::default(),
                    CoreLimits::default(),
                );
                joiner.joined_cluster(now, reply);
                joiner.tick(now + Duration::from_secs(1));
            }
        }
        other => unreachable!("no seed of kind {other}"),
    }
    core.tick(now);
}

/// Runs one seed: a fresh node, a few dozen hostile messages, then a check
/// that it still serves. Returns what went wrong.
fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let seeds = seeds();
    let start = Instant::now();
    let mut now = start;
    let mut core = serving(now);
    for request in 2..40u64 {
        let (kind, base) = &seeds[rng.below(seeds.len())];
        let mut bytes = base.clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut bytes);
        }
        now += Duration::from_millis(rng.below(300) as u64);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply(&mut core, now, request, kind, &bytes);
        }));
        if outcome.is_err() {
            return Err(format!("a mutated {kind} panicked the node: {bytes:02x?}"));
        }
        core.take_outputs();
    }
    // Still serving: a new participant joins and is welcomed.
    core.join(now, 1000, joiner("Probe"), 1);
    let outputs = core.take_outputs();
    let opened = outputs
        .iter()
        .any(|o| matches!(o, Output::Opened(opened) if opened.request == 1000));
    let refused = outputs.iter().find_map(|o| match o {
        Output::Reply {
            request: 1000,
            reply: Reply::Refused(e),
        } => Some(e.to_string()),
        _ => None,
    });
    match (opened, refused) {
        (true, _) => Ok(()),
        (false, Some(e)) if e.contains("taken") => Ok(()),
        (false, e) => Err(format!("the node no longer admits a participant: {e:?}")),
    }
}

#[test]
fn mutated_requests_and_frames_never_panic_a_node_and_it_keeps_serving() {
    if let Some(seed) = env_u64("CHITTY_FUZZ_SEED") {
        run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let iterations = env_u64("CHITTY_FUZZ_ITERATIONS").unwrap_or(3000);
    // Quiet: the node logs every refusal it makes.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let failures: Vec<(u64, String)> = (1..=iterations)
        .filter_map(|seed| run(seed).err().map(|e| (seed, e)))
        .take(5)
        .collect();
    std::panic::set_hook(hook);
    if let Some((seed, _)) = failures.first() {
        let list: Vec<String> = failures
            .iter()
            .map(|(s, e)| format!("  seed {s}: {e}"))
            .collect();
        panic!(
            "{} seeds failed:\n{}\nreplay: CHITTY_FUZZ_SEED={seed} cargo test --test hostile_bytes",
            failures.len(),
            list.join("\n")
        );
    }
}

#[test]
fn the_validation_rules_never_panic_on_arbitrary_text() {
    let mut rng = Rng::new(7);
    for _ in 0..20_000 {
        let len = rng.below(200);
        let text: String = (0..len)
            .map(|_| match rng.below(4) {
                0 => char::from(rng.below(128) as u8),
                1 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                2 => ['\u{1b}', '\u{202e}', '\u{200b}', '\r', '\n', ' '][rng.below(6)],
                _ => 'a',
            })
            .collect();
        let _ = validate::message(&text);
        let _ = validate::name(&text);
    }
}
