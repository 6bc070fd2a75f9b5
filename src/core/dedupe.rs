//! Publish dedupe: the publish ids already delivered, and their events.
//!
//! A client retries a publish it got no answer for with the same publish id,
//! and after a failover the retry may reach another node, which stamps it
//! again. Remembering each id with the event it was delivered as lets a node
//! answer a retry with the original event, and drop a second stamping of the
//! same publish relayed from another node. The memory is bounded: the oldest
//! ids are forgotten first.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::core::FastMap;
use crate::proto::{Event, EventKind};

/// A publish id as the dedupe map keeps it: a UUID (what clients send) as
/// its 128 bits, inline; anything else as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PublishKey {
    /// As two halves rather than a `u128`, which would align the key (and
    /// every map entry) to 16 bytes.
    Uuid([u64; 2]),
    Text(Box<str>),
}

impl PublishKey {
    fn new(id: &str) -> Self {
        // Only the canonical (lowercase, hyphenated) form, so that two
        // different texts are never one key.
        match canonical_uuid(id.as_bytes()) {
            Some(bits) => PublishKey::Uuid([(bits >> 64) as u64, bits as u64]),
            None => PublishKey::Text(id.into()),
        }
    }
}

/// The 128 bits of `id` if it is a UUID in canonical form: 36 characters,
/// lowercase hex digits in groups of 8-4-4-4-12 joined by hyphens.
fn canonical_uuid(id: &[u8]) -> Option<u128> {
    if id.len() != 36 {
        return None;
    }
    let mut bits = 0u128;
    for (i, &c) in id.iter().enumerate() {
        let digit = match c {
            b'-' if matches!(i, 8 | 13 | 18 | 23) => continue,
            _ if matches!(i, 8 | 13 | 18 | 23) => return None,
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        bits = bits << 4 | u128::from(digit);
    }
    Some(bits)
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

    /// The event `publish_id` was delivered as, if remembered.
    pub fn original(&self, publish_id: &str) -> Option<&Arc<Event>> {
        self.published.get(&PublishKey::new(publish_id))
    }

    /// Remembers that `publish_id` was delivered as `event`, forgetting the
    /// oldest ids beyond the capacity.
    pub fn remember(&mut self, publish_id: &str, event: Arc<Event>) {
        let key = PublishKey::new(publish_id);
        if self.published.insert(key.clone(), event).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.published.remove(&old);
            }
        }
    }

    /// A message whose publish id was already delivered as another event.
    pub fn is_retry_of_delivered(&self, event: &Event) -> bool {
        event.kind() == EventKind::Message
            && !event.publish_id.is_empty()
            && self
                .original(&event.publish_id)
                .is_some_and(|original| original.id != event.id)
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

    #[test]
    fn the_oldest_publish_ids_are_forgotten_first() {
        let mut d = PublishDedupe::new(2);
        for id in ["a", "b", "c"] {
            d.remember(id, Arc::new(Event::default()));
        }
        assert!(d.original("a").is_none());
        assert!(d.original("b").is_some() && d.original("c").is_some());
    }
}
