//! Recent events, bounded by count and by bytes, oldest dropped first.
//!
//! Used to replay what a resuming participant or a catching-up peer missed.
//! A replay that reaches past what is kept is reported as a gap, never
//! silently shortened.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use prost::Message;

use crate::core::causal::OriginKey;
use crate::proto::{Event, GapRange};

#[derive(Debug)]
pub struct History {
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Per origin, the highest sequence number dropped to stay in bounds.
    /// One entry per origin ever dropped from (a few): a list, so that
    /// dropping an event neither hashes nor copies its origin's id.
    dropped: Vec<(OriginKey, u64)>,
}

impl History {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            dropped: Vec::new(),
        }
    }

    pub fn push(&mut self, event: Arc<Event>) {
        let size = event.encoded_len();
        self.events.push_back((event, size));
        self.bytes += size;
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            match self.events.pop_front() {
                Some((old, size)) => {
                    self.bytes -= size;
                    if let Some(id) = &old.id
                        && let Some(origin) = &id.origin
                    {
                        let known = self.dropped.iter_mut().find(|(key, _)| {
                            key.generation == origin.generation && key.id == origin.id
                        });
                        match known {
                            Some((_, floor)) => *floor = (*floor).max(id.seq),
                            None => self.dropped.push((OriginKey::from(origin), id.seq)),
                        }
                    }
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything after `seen` (highest sequence seen per origin; origins not
    /// listed count as nothing seen), in the order it was delivered here, and
    /// the ranges that were needed but are no longer kept.
    pub fn after(&self, seen: &HashMap<OriginKey, u64>) -> (Vec<Arc<Event>>, Vec<GapRange>) {
        let mut gaps = Vec::new();
        for (origin, floor) in &self.dropped {
            let floor = *floor;
            let from = seen.get(origin).copied().unwrap_or(0) + 1;
            if from <= floor {
                gaps.push(GapRange {
                    origin: Some(origin.to_node_id()),
                    from_seq: from,
                    to_seq: floor + 1,
                });
            }
        }
        gaps.sort_by(|a, b| {
            a.origin
                .as_ref()
                .map(|o| &o.id)
                .cmp(&b.origin.as_ref().map(|o| &o.id))
        });
        let events = self
            .iter()
            .filter(|e| {
                let Some(id) = &e.id else { return false };
                let Some(origin) = &id.origin else {
                    return false;
                };
                id.seq > seen.get(&OriginKey::from(origin)).copied().unwrap_or(0)
            })
            .cloned()
            .collect();
        (events, gaps)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Event>> {
        self.events.iter().map(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(text: &str) -> Arc<Event> {
        Arc::new(Event {
            text: text.into(),
            ..Default::default()
        })
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut h = History::new(3, 1_000);
        for i in 0..5 {
            h.push(ev(&i.to_string()));
        }
        let kept: Vec<_> = h.iter().map(|e| e.text.clone()).collect();
        assert_eq!(kept, ["2", "3", "4"]);

        let mut h = History::new(100, 50);
        for _ in 0..10 {
            h.push(ev(&"x".repeat(20)));
        }
        assert!(h.bytes() <= 50, "kept {} bytes", h.bytes());
        assert_eq!(h.len(), 2);
    }
}
