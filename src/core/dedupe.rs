//! Publish dedupe: the publish ids already delivered, and their events.
//!
//! A client retries a publish it got no answer for with the same publish id,
//! and after a failover the retry may reach another node, which stamps it
//! again. Remembering each id with the event it was delivered as lets a node
//! answer a retry with the original event, and drop a second stamping of the
//! same publish relayed from another node. The memory is bounded: the oldest
//! ids are forgotten first.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::core::FastMap;
use crate::core::validate::canonical_uuid;
use crate::proto::{Event, EventKind};

/// A publish id as the dedupe map keeps it: a UUID (what clients send) as
/// its 128 bits, inline; anything else as its text. Made once per message
/// and used for every lookup of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublishKey {
    /// As two halves rather than a `u128`, which would align the key (and
    /// every map entry) to 16 bytes.
    Uuid([u64; 2]),
    Text(Box<str>),
}

impl PublishKey {
    pub fn new(id: &str) -> Self {
        // Only the canonical (lowercase, hyphenated) form, so that two
        // different texts are never one key.
        match canonical_uuid(id.as_bytes()) {
            Some(halves) => PublishKey::Uuid(halves),
            None => PublishKey::Text(id.into()),
        }
    }
}

#[derive(Debug)]
pub struct PublishDedupe {
    published: FastMap<PublishKey, Arc<Event>>,
    /// Keys in the order first remembered, to forget the oldest.
    order: VecDeque<PublishKey>,
    /// Ids remembered at most.
    capacity: usize,
}

impl PublishDedupe {
    pub fn new(capacity: usize) -> Self {
        Self {
            published: FastMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// The event the publish id `key` was delivered as, if remembered.
    pub fn original(&self, key: &PublishKey) -> Option<&Arc<Event>> {
        self.published.get(key)
    }

    /// Remembers that the publish id `key` was delivered as `event` (a
    /// message this node stamped, not remembered yet), forgetting the
    /// oldest ids beyond the capacity.
    pub fn remember(&mut self, key: PublishKey, event: Arc<Event>) {
        if self.published.insert(key.clone(), event).is_none() {
            self.note_order(key);
        }
    }

    /// Takes in `event`, delivered from another node: false for a message
    /// whose publish id was already delivered as another event (the same
    /// publish, stamped again after a failover), which is not to be
    /// delivered again. Otherwise remembers a message's publish id, as
    /// [`Self::remember`] does, and returns true.
    pub fn first_delivery(&mut self, event: &Arc<Event>) -> bool {
        if event.kind() != EventKind::Message || event.publish_id.is_empty() {
            return true;
        }
        let key = PublishKey::new(&event.publish_id);
        match self.published.entry(key) {
            Entry::Occupied(original) => original.get().id == event.id,
            Entry::Vacant(vacant) => {
                let key = vacant.key().clone();
                vacant.insert(event.clone());
                self.note_order(key);
                true
            }
        }
    }

    /// The latest message remembered of each participant that `wanted`
    /// accepts, newest first, at most `most` of them, each cut to what
    /// answering a retry needs (id, clock, participant and publish id).
    pub fn latest_per_participant(&self, wanted: impl Fn(&str) -> bool, most: usize) -> Vec<Event> {
        let mut taken = std::collections::HashSet::new();
        let mut latest = Vec::new();
        for key in self.order.iter().rev() {
            if latest.len() >= most {
                break;
            }
            let Some(event) = self.published.get(key) else {
                continue;
            };
            let pid = event.participant_id.as_str();
            if wanted(pid) && taken.insert(pid) {
                latest.push(Event {
                    id: event.id.clone(),
                    lamport: event.lamport,
                    kind: EventKind::Message as i32,
                    participant_id: event.participant_id.clone(),
                    publish_id: event.publish_id.clone(),
                    ..Default::default()
                });
            }
        }
        latest
    }

    fn note_order(&mut self, key: PublishKey) {
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.published.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_ids_are_one_key_only_when_they_are_the_same_text() {
        let id = "0b8f5b3e-2c1d-4a7e-9f00-1234567890ab";
        let (high, low) = uuid::Uuid::parse_str(id).unwrap().as_u64_pair();
        assert_eq!(PublishKey::new(id), PublishKey::Uuid([high, low]));
        let other_forms = [
            id.to_uppercase(),
            id.replace('-', ""),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            id.replacen('-', "0", 1),
            id.replacen('b', "-", 1),
            id.replacen('a', "g", 1),
            format!("{id} "),
            id[..35].to_string(),
        ];
        for other in &other_forms {
            assert_ne!(PublishKey::new(other), PublishKey::new(id), "{other}");
            assert_eq!(
                PublishKey::new(other),
                PublishKey::Text(other.as_str().into())
            );
        }
        assert_eq!(
            PublishKey::new("retry-7"),
            PublishKey::Text("retry-7".into())
        );
    }

    fn message(origin: &str, seq: u64, publish_id: &str) -> Arc<Event> {
        Arc::new(Event {
            id: Some(crate::proto::EventId {
                origin: Some(crate::proto::NodeId {
                    id: origin.into(),
                    generation: 1,
                }),
                seq,
            }),
            kind: EventKind::Message as i32,
            publish_id: publish_id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_publish_stamped_again_elsewhere_is_delivered_once() {
        let mut d = PublishDedupe::new(10);
        let first = message("a", 1, "p");
        assert!(d.first_delivery(&first));
        // The same event again (no second stamping): still itself.
        assert!(d.first_delivery(&first));
        // The same publish, stamped again by node b after a failover.
        assert!(!d.first_delivery(&message("b", 4, "p")));
        assert_eq!(d.original(&PublishKey::new("p")), Some(&first));
        // Events that are not messages, or have no publish id, pass.
        assert!(d.first_delivery(&message("b", 5, "")));
        assert!(d.first_delivery(&message("b", 5, "")));
        let joined = Arc::new(Event {
            kind: EventKind::Joined as i32,
            publish_id: "p".into(),
            ..Default::default()
        });
        assert!(d.first_delivery(&joined));
    }

    #[test]
    fn the_oldest_publish_ids_are_forgotten_first() {
        let mut d = PublishDedupe::new(2);
        d.remember(PublishKey::new("a"), message("n", 1, "a"));
        assert!(d.first_delivery(&message("n", 2, "b")));
        d.remember(PublishKey::new("c"), message("n", 3, "c"));
        assert!(d.original(&PublishKey::new("a")).is_none());
        assert!(d.original(&PublishKey::new("b")).is_some());
        assert!(d.original(&PublishKey::new("c")).is_some());
        // Forgotten: a second stamping of "a" is no longer recognised.
        assert!(d.first_delivery(&message("m", 1, "a")));
    }

    #[test]
    fn the_latest_message_of_each_wanted_participant_is_cut_to_what_a_retry_needs() {
        let mut d = PublishDedupe::new(10);
        let by = |who: &str, seq: u64, publish_id: &str| {
            let mut event = Arc::unwrap_or_clone(message("n", seq, publish_id));
            event.participant_id = who.into();
            event.participant_name = format!("name of {who}");
            event.text = "hello".into();
            event.lamport = seq * 10;
            Arc::new(event)
        };
        d.remember(PublishKey::new("a1"), by("ann", 1, "a1"));
        d.remember(PublishKey::new("b1"), by("bob", 2, "b1"));
        d.remember(PublishKey::new("a2"), by("ann", 3, "a2"));
        d.remember(PublishKey::new("c1"), by("cy", 4, "c1"));
        let latest = d.latest_per_participant(|pid| pid != "cy", 10);
        let got: Vec<_> = latest
            .iter()
            .map(|e| (e.participant_id.as_str(), e.publish_id.as_str(), e.lamport))
            .collect();
        assert_eq!(got, [("ann", "a2", 30), ("bob", "b1", 20)]);
        assert!(latest.iter().all(|e| e.text.is_empty()
            && e.participant_name.is_empty()
            && e.kind() == EventKind::Message
            && e.id.is_some()));
        assert_eq!(d.latest_per_participant(|_| true, 1).len(), 1);
    }
}
