//! Recent events, bounded by count and by bytes, oldest dropped first.
//!
//! Used to replay what a resuming participant or a catching-up peer missed.
//! A replay that reaches past what is kept is reported as a gap, never
//! silently shortened.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use prost::Message;

use crate::core::causal::{Incarnation, OriginKey};
use crate::proto::{Event, GapRange, NodeId};

#[derive(Debug)]
pub struct History {
    events: VecDeque<Kept>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Per origin ever kept (a few), what was dropped to stay in bounds.
    dropped: Vec<Floors>,
}

/// Of one origin, the highest sequence number dropped (0: none yet), of
/// any event and of one participants see.
#[derive(Debug)]
struct Floors {
    origin: OriginKey,
    any: u64,
    visible: u64,
}

/// Who a replay is for: a peer needs every event, a participant only those
/// it is shown (a gap in internal events is no gap to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Peer,
    Participant,
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
    visible: bool,
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
        let visible = crate::core::event::visible(&event);
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
            visible,
        });
        self.bytes += size;
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.size;
            if let Some(floors) = self.dropped.get_mut(old.origin) {
                floors.any = floors.any.max(old.seq);
                if old.visible {
                    floors.visible = floors.visible.max(old.seq);
                }
            }
        }
    }

    /// Events of `origin` up to `seq` were delivered before this node
    /// joined the cluster, so it never kept them: a participant's replay
    /// reaching back there gets a gap notice. Not a peer's: the peer can
    /// have them from a node that kept them, and must not be told to skip.
    pub fn never_kept(&mut self, origin: &NodeId, seq: u64) {
        let i = self.origin_index(origin);
        let floors = &mut self.dropped[i];
        floors.visible = floors.visible.max(seq);
    }

    fn origin_index(&mut self, origin: &NodeId) -> usize {
        let known = self
            .dropped
            .iter()
            .position(|f| f.origin.generation == origin.generation && f.origin.id == origin.id);
        known.unwrap_or_else(|| {
            self.dropped.push(Floors {
                origin: OriginKey::from(origin),
                any: 0,
                visible: 0,
            });
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
    /// the ranges that `audience` needed but are no longer kept.
    pub fn after(
        &self,
        seen: &HashMap<OriginKey, u64>,
        audience: Audience,
    ) -> (Vec<Arc<Event>>, Vec<GapRange>) {
        let mut gaps = Vec::new();
        for floors in &self.dropped {
            let floor = match audience {
                Audience::Peer => floors.any,
                Audience::Participant => floors.visible,
            };
            let from = seen.get(&floors.origin).copied().unwrap_or(0) + 1;
            if from <= floor {
                gaps.push(GapRange {
                    origin: Some(floors.origin.to_node_id()),
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
                id.seq > seen.get(origin as &dyn Incarnation).copied().unwrap_or(0)
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

    #[test]
    fn a_dropped_internal_event_is_a_gap_for_peers_only() {
        let origin = NodeId {
            id: "n".into(),
            generation: 1,
        };
        let event = |seq: u64, kind: crate::proto::EventKind| {
            Arc::new(Event {
                id: Some(crate::proto::EventId {
                    origin: Some(origin.clone()),
                    seq,
                }),
                kind: kind as i32,
                ..Default::default()
            })
        };
        let mut h = History::new(2, 1_000_000);
        h.push(event(1, crate::proto::EventKind::Message));
        h.push(event(2, crate::proto::EventKind::Moved));
        h.push(event(3, crate::proto::EventKind::Message));
        h.push(event(4, crate::proto::EventKind::Message));
        // 1 and 2 dropped. Seen up to 1: only the internal 2 is missing.
        let seen = HashMap::from([(OriginKey::from(&origin), 1)]);
        let (events, gaps) = h.after(&seen, Audience::Participant);
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(events.len(), 2);
        let (_, gaps) = h.after(&seen, Audience::Peer);
        assert_eq!((gaps.len(), gaps[0].from_seq, gaps[0].to_seq), (1, 2, 3));
        // Seen nothing: message 1 is missing for both.
        let (_, gaps) = h.after(&HashMap::new(), Audience::Participant);
        assert_eq!((gaps.len(), gaps[0].from_seq, gaps[0].to_seq), (1, 1, 2));
    }
}
