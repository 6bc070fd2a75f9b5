//! The validation functions of `core::validate` on arbitrary strings and
//! event values: `message`, `name`, `publish_id`, `token`,
//! `request_lamport`, `seen_and_nodes`, `relayed_event` and `escaped`.
//! What must hold: none panics; `escaped(x)` holds no control character and
//! nothing left to escape (escaping it again changes nothing), and leaves a
//! valid message or name as it is; what a rule accepts has the properties it
//! promises (a message is 1 to 128 characters and not blank, a name 1 to 32
//! and trimmed, a publish id empty or a canonical UUID, a token at most 64
//! bytes, a request clock at most 2^40 ahead and at most 2^62, a relayed
//! event of a known kind at most 2^63 whose name, publish id and, for a
//! message, text pass their own rules).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use chitty::core::validate::{self, MAX_EVENT_LAMPORT, MAX_LAMPORT_LEAD, MAX_REQUEST_LAMPORT};
use chitty::proto::{Event, EventId, EventKind, NodeId, SeqMark};

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    lamport: u64,
    now: u64,
    seen: u16,
    unanswered_at: u16,
    known_nodes: u16,
    event: ArbEvent,
}

#[derive(Arbitrary, Debug)]
struct ArbEvent {
    origin: Option<(String, u64)>,
    seq: u64,
    /// Near the bounds more often than not.
    lamport: (bool, u64),
    kind: i32,
    participant_name: String,
    participant_id: String,
    text: String,
    /// A canonical UUID from these bytes, or the string itself.
    publish_id: Result<[u8; 16], String>,
    deps: u16,
}

impl ArbEvent {
    fn event(&self) -> Event {
        let (near, lamport) = self.lamport;
        let lamport = if near {
            MAX_EVENT_LAMPORT.wrapping_add(lamport % 5).wrapping_sub(2)
        } else {
            lamport
        };
        let publish_id = match &self.publish_id {
            Ok(bytes) => uuid::Uuid::from_bytes(*bytes).to_string(),
            Err(s) => s.clone(),
        };
        Event {
            id: Some(EventId {
                origin: self.origin.as_ref().map(|(id, generation)| NodeId {
                    id: id.clone(),
                    generation: *generation,
                }),
                seq: self.seq,
            }),
            lamport,
            kind: self.kind % 6,
            participant_name: self.participant_name.clone(),
            participant_id: self.participant_id.clone(),
            text: self.text.clone(),
            publish_id,
            deps: vec![SeqMark::default(); usize::from(self.deps % 1100)],
        }
    }
}

fn text_rules(x: &str) {
    let chars = x.chars().count();
    let shown = validate::escaped(x);
    assert!(!shown.chars().any(char::is_control), "{x:?} -> {shown:?}");
    assert_eq!(validate::escaped(&shown), shown, "escaped twice: {x:?}");

    if validate::message(x).is_ok() {
        assert!((1..=validate::MAX_MESSAGE_CHARS).contains(&chars), "{x:?}");
        assert!(x.chars().any(validate::visible), "{x:?}");
        assert_eq!(shown, x, "a valid message shows as itself");
    }
    if validate::name(x).is_ok() {
        assert!((1..=validate::MAX_NAME_CHARS).contains(&chars), "{x:?}");
        assert_eq!(x.trim(), x, "{x:?}");
        assert_eq!(shown, x, "a valid name shows as itself");
    }
    if validate::publish_id(x).is_ok() && !x.is_empty() {
        let id = uuid::Uuid::parse_str(x).expect("an accepted publish id is a UUID");
        assert_eq!(id.to_string(), x, "and in canonical form");
    }
    assert_eq!(
        validate::token("field", x).is_ok(),
        x.len() <= validate::MAX_TOKEN_BYTES
    );
}

fuzz_target!(|input: Input| {
    text_rules(&input.text);
    text_rules(&input.event.text);
    text_rules(&input.event.participant_name);
    text_rules(&input.event.participant_id);

    for (lamport, now) in [
        (input.lamport, input.now),
        (input.now, input.lamport),
        (input.lamport, u64::MAX),
        (
            MAX_REQUEST_LAMPORT.wrapping_add(input.lamport % 3),
            input.now,
        ),
    ] {
        if validate::request_lamport(lamport, now).is_ok() {
            assert!(lamport <= MAX_REQUEST_LAMPORT);
            assert!(lamport <= now.saturating_add(MAX_LAMPORT_LEAD));
        }
    }

    let (seen, unanswered_at, known_nodes) = (
        usize::from(input.seen),
        usize::from(input.unanswered_at),
        usize::from(input.known_nodes),
    );
    assert_eq!(
        validate::seen_and_nodes(seen, unanswered_at, known_nodes).is_ok(),
        seen <= validate::MAX_SEEN_MARKS
            && unanswered_at <= validate::MAX_UNANSWERED_AT
            && known_nodes <= validate::MAX_KNOWN_NODES
    );

    let event = input.event.event();
    if validate::relayed_event(&event).is_ok() {
        assert!(event.lamport <= MAX_EVENT_LAMPORT);
        let kind = EventKind::try_from(event.kind).expect("a known kind");
        assert_ne!(kind, EventKind::Unspecified);
        assert!(validate::name(&event.participant_name).is_ok());
        assert!(validate::publish_id(&event.publish_id).is_ok());
        assert!(validate::token("participant_id", &event.participant_id).is_ok());
        assert!(event.deps.len() <= validate::MAX_SEEN_MARKS);
        if kind == EventKind::Message {
            assert!(validate::message(&event.text).is_ok());
        } else {
            assert_eq!(validate::escaped(&event.text), event.text);
        }
    }
});
