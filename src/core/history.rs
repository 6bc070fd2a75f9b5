//! Recent events, bounded by count and by bytes, oldest dropped first.
//!
//! Used to replay what a resuming participant or a catching-up peer missed.
//! A replay that reaches past what is kept is reported as a gap, never
//! silently shortened.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use prost::Message;

use crate::core::causal::OriginKey;
use crate::proto::{Event, GapRange, NodeId};

#[derive(Debug)]
pub struct History {
    events: VecDeque<Kept>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Per origin ever kept (a few), the highest sequence number dropped to
    /// stay in bounds (0: none yet).
    dropped: Vec<(OriginKey, u64)>,
}

/// A kept event, with what dropping it needs noted when it came in (when
/// it was still in the cache), so that dropping it reads nothing of it.
#[derive(Debug)]
struct Kept {
    event: Arc<Event>,
    size: usize,
    /// Its origin's index in `dropped`, and its sequence number there.
    origin: usize,
    seq: u64,
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
        let (origin, seq) = match event
            .id
            .as_ref()
            .and_then(|id| Some((id.origin.as_ref()?, id.seq)))
        {
            Some((origin, seq)) => (self.origin_index(origin), seq),
            // Not from any origin: nothing to note when it is dropped.
            None => (usize::MAX, 0),
        };
        self.events.push_back(Kept {
            event,
            size,
            origin,
            seq,
        });
        self.bytes += size;
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.size;
            if let Some((_, floor)) = self.dropped.get_mut(old.origin) {
                *floor = (*floor).max(old.seq);
            }
        }
    }

    fn origin_index(&mut self, origin: &NodeId) -> usize {
        let known = self
            .dropped
            .iter()
            .position(|(key, _)| key.generation == origin.generation && key.id == origin.id);
        known.unwrap_or_else(|| {
            self.dropped.push((OriginKey::from(origin), 0));
            self.dropped.len() - 1
        })
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
        self.events.iter().map(|k| &k.event)
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
