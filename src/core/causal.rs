//! Causal delivery of relayed events: per-origin FIFO plus dependencies, with
//! a bounded hold-back queue.
//!
//! An event is identified by its origin (a node incarnation) and a sequence
//! number, 1, 2, 3, ... per origin without gaps. Its `deps` say what the origin
//! had delivered when it stamped the event: "everything from origin X up to
//! seq n". A node delivers an event only when
//! * its seq is the next one expected from its origin (FIFO per origin), and
//! * for every dependency, at least that much of that origin is delivered.
//!
//! Events reach a node over different links (directly from their origin,
//! forwarded by a third node, replayed after a reconnect), so they arrive out
//! of order and more than once. Delivering them as they come would show a
//! reply before the message it answers, or a "left" before the "joined". So an
//! event that is not yet deliverable waits here, and each delivery may make
//! others deliverable. Duplicates are recognised by seq and dropped.
//!
//! The queue is bounded by `capacity`. When it is full a new event is refused
//! ([`Offer::Full`]) and not stored: the caller decides what that means (the
//! link re-sends later, or the gap is reported and skipped with
//! [`HoldBack::set_delivered`]). One exception keeps a full queue from
//! deadlocking: an event that is deliverable right now is always accepted,
//! since the queue may be full of events waiting for exactly that one. At most
//! one event per origin is deliverable at a time, so the queue holds at most
//! `capacity` plus the number of origins.
//!
//! When several events are deliverable the one with the smallest (Lamport
//! time, origin) goes first, so delivery depends only on what was offered, not
//! on hash-map order.
//!
//! Origins are node incarnations: a restarted node has a new generation and
//! numbers its events from 1 again, so it is a different origin.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::core::FastMap;
use crate::proto::{Event, NodeId, SeqMark};

/// A node incarnation as a map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OriginKey {
    pub id: String,
    pub generation: u64,
}

/// A node incarnation, owned ([`OriginKey`]) or as an event carries it
/// ([`NodeId`]). A map keyed by `OriginKey` is looked up with either
/// through `&dyn Incarnation`, without building a key (which copies the
/// id): the hot paths look up an origin for every event and dependency.
pub trait Incarnation {
    fn node_id(&self) -> &str;
    fn generation(&self) -> u64;
}

impl Incarnation for OriginKey {
    fn node_id(&self) -> &str {
        &self.id
    }
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl Incarnation for NodeId {
    fn node_id(&self) -> &str {
        &self.id
    }
    fn generation(&self) -> u64 {
        self.generation
    }
}

// The key and its borrowed form hash and compare alike, as `Borrow` needs.
impl Hash for OriginKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn Incarnation).hash(state);
    }
}

impl Hash for dyn Incarnation + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.node_id().hash(state);
        self.generation().hash(state);
    }
}

impl PartialEq for dyn Incarnation + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.node_id() == other.node_id() && self.generation() == other.generation()
    }
}

impl Eq for dyn Incarnation + '_ {}

impl<'a> Borrow<dyn Incarnation + 'a> for OriginKey {
    fn borrow(&self) -> &(dyn Incarnation + 'a) {
        self
    }
}

/// `marks` as sequence marks, sorted by origin.
fn sorted_marks<'a>(marks: impl Iterator<Item = (&'a OriginKey, u64)>) -> Vec<SeqMark> {
    let mut marks: Vec<SeqMark> = marks
        .map(|(origin, seq)| SeqMark {
            origin: Some(origin.to_node_id()),
            seq,
        })
        .collect();
    sort_by_origin(&mut marks);
    marks
}

/// Sorts `marks` by origin, as `OriginKey` orders origins: by id, then
/// generation.
pub fn sort_by_origin(marks: &mut [SeqMark]) {
    fn key(mark: &SeqMark) -> Option<(&str, u64)> {
        mark.origin.as_ref().map(|o| (o.id.as_str(), o.generation))
    }
    marks.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// Whether two incarnations are the same.
fn same(a: &dyn Incarnation, b: &dyn Incarnation) -> bool {
    a == b
}

impl From<&NodeId> for OriginKey {
    fn from(node: &NodeId) -> Self {
        Self {
            id: node.id.clone(),
            generation: node.generation,
        }
    }
}

impl OriginKey {
    pub fn to_node_id(&self) -> NodeId {
        NodeId {
            id: self.id.clone(),
            generation: self.generation,
        }
    }
}

/// What [`HoldBack::offer`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Already delivered or already held (or malformed): dropped.
    Duplicate,
    /// Stored; it leaves through [`HoldBack::pop_ready`] once deliverable.
    Held,
    /// Refused: the queue is at capacity. The event was not stored.
    Full,
}

/// The delivered vector and the events waiting for their predecessors.
#[derive(Debug)]
pub struct HoldBack {
    /// Per origin, the highest seq delivered (everything up to it is).
    delivered: FastMap<OriginKey, u64>,
    /// Per origin, events offered but not delivered yet, by seq.
    pending: FastMap<OriginKey, BTreeMap<u64, Arc<Event>>>,
    /// Total events in `pending`.
    held: usize,
    capacity: usize,
}

impl HoldBack {
    /// An empty queue holding at most `capacity` events that are not yet
    /// deliverable.
    pub fn new(capacity: usize) -> Self {
        Self {
            delivered: FastMap::default(),
            pending: FastMap::default(),
            held: 0,
            capacity,
        }
    }

    /// Takes in an event from any link.
    pub fn offer(&mut self, event: Arc<Event>) -> Offer {
        let Some((origin, seq)) = identity(&event) else {
            return Offer::Duplicate;
        };
        if seq == 0 || seq <= self.delivered_of(origin) {
            return Offer::Duplicate;
        }
        let held = self.pending.get(origin as &dyn Incarnation);
        if held.is_some_and(|queue| queue.contains_key(&seq)) {
            return Offer::Duplicate;
        }
        if self.held >= self.capacity && !self.ready(origin, seq, &event) {
            return Offer::Full;
        }
        match self.pending.get_mut(origin as &dyn Incarnation) {
            Some(queue) => {
                queue.insert(seq, event);
            }
            None => {
                let key = OriginKey::from(origin);
                self.pending.insert(key, BTreeMap::from([(seq, event)]));
            }
        }
        self.held += 1;
        Offer::Held
    }

    /// Removes and returns one deliverable event, marking it delivered; `None`
    /// if nothing held is deliverable.
    pub fn pop_ready(&mut self) -> Option<Arc<Event>> {
        // Only the lowest held seq of each origin can be next in FIFO order.
        let next = self
            .pending
            .iter()
            .filter_map(|(origin, queue)| {
                let (&seq, event) = queue.first_key_value()?;
                self.ready(origin, seq, event)
                    .then_some((event.lamport, origin, seq, event))
            })
            .min_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)))
            .map(|(.., event)| Arc::clone(event))?;
        // Looked up by the event's own origin: it is held under that.
        let (origin, seq) = identity(&next)?;
        let queue = self.pending.get_mut(origin as &dyn Incarnation)?;
        let event = queue.remove(&seq)?;
        if queue.is_empty() {
            self.pending.remove(origin as &dyn Incarnation);
        }
        self.held -= 1;
        match self.delivered.get_mut(origin as &dyn Incarnation) {
            Some(delivered) => *delivered = seq,
            None => {
                self.delivered.insert(OriginKey::from(origin), seq);
            }
        }
        Some(event)
    }

    /// A held message published with `publish_id`: a retry of it must not
    /// be stamped again (its original reached this node but waits for its
    /// dependencies). Only looks when something is held.
    pub fn held_publish(&self, publish_id: &str) -> Option<&Arc<Event>> {
        if self.held == 0 {
            return None;
        }
        self.pending
            .values()
            .flat_map(|queue| queue.values())
            .find(|e| e.kind() == crate::proto::EventKind::Message && e.publish_id == publish_id)
    }

    /// This node stamped its own event `seq`: it is delivered here by
    /// definition.
    pub fn record_own(&mut self, origin: &NodeId, seq: u64) {
        self.raise(origin, seq);
    }

    /// The delivered vector, sorted by origin.
    pub fn delivered(&self) -> Vec<SeqMark> {
        sorted_marks(self.delivered.iter().map(|(k, &seq)| (k, seq)))
    }

    /// Highest seq delivered from `origin` (0 for none).
    pub fn delivered_of(&self, origin: &impl Incarnation) -> u64 {
        self.delivered
            .get(origin as &dyn Incarnation)
            .copied()
            .unwrap_or(0)
    }

    /// Per origin with events held back, the highest of them.
    pub fn held_back(&self) -> Vec<SeqMark> {
        if self.held == 0 {
            return Vec::new();
        }
        sorted_marks(
            self.pending
                .iter()
                .filter_map(|(origin, queue)| Some((origin, *queue.keys().next_back()?))),
        )
    }

    /// Highest seq of `origin` this node has: delivered, or held back until
    /// what it depends on arrives (0 for none).
    pub fn received_of(&self, origin: &impl Incarnation) -> u64 {
        let delivered = self.delivered_of(origin);
        self.pending
            .get(origin as &dyn Incarnation)
            .and_then(|queue| queue.keys().next_back())
            .map_or(delivered, |&held| held.max(delivered))
    }

    /// Treats everything up to `marks` as delivered: the state a joining node
    /// starts from, or a gap being skipped. Never lowers anything; held events
    /// that this makes obsolete are dropped.
    pub fn set_delivered(&mut self, marks: &[SeqMark]) {
        for mark in marks {
            if let Some(origin) = mark.origin.as_ref() {
                self.raise(origin, mark.seq);
            }
        }
    }

    /// The highest sequence number of `origin` that some held event still
    /// waits for (as a dependency, or as a predecessor of a later event of
    /// `origin` itself); `None` if nothing waits on `origin`.
    pub fn blocked_on(&self, origin: &OriginKey) -> Option<u64> {
        let delivered = self.delivered_of(origin);
        let as_dep = self
            .pending
            .values()
            .flat_map(|queue| queue.values())
            .flat_map(|event| event.deps.iter())
            .filter(|dep| dep.origin.as_ref().is_some_and(|o| same(o, origin)))
            .map(|dep| dep.seq);
        let as_predecessor = self
            .pending
            .get(origin)
            .and_then(|queue| queue.keys().next())
            .map(|first| first - 1);
        as_dep
            .chain(as_predecessor)
            .max()
            .filter(|&need| need > delivered)
    }

    /// Where a gap in `origin`'s events ends: before its first held event
    /// if one is held (skipping further would drop it), else the highest
    /// that a held event waits for. `None` if nothing waits on `origin`.
    pub fn gap_end(&self, origin: &OriginKey) -> Option<u64> {
        let delivered = self.delivered_of(origin);
        match self
            .pending
            .get(origin)
            .and_then(|queue| queue.keys().next())
        {
            Some(first) => Some(first - 1).filter(|&end| end > delivered),
            None => self.blocked_on(origin),
        }
    }

    /// Events held, waiting for their predecessors (or for `pop_ready`).
    pub fn held(&self) -> usize {
        self.held
    }

    /// The dependencies to stamp on a new event of `except` (the node itself:
    /// its own order is already given by seq).
    pub fn deps(&self, except: &NodeId) -> Vec<SeqMark> {
        sorted_marks(
            self.delivered
                .iter()
                .filter(|(origin, _)| !same(*origin, except))
                .map(|(origin, &seq)| (origin, seq)),
        )
    }

    /// Whether event `seq` of `origin` can be delivered now.
    fn ready(&self, origin: &impl Incarnation, seq: u64, event: &Event) -> bool {
        seq == self.delivered_of(origin) + 1
            && event.deps.iter().all(|dep| {
                let Some(dep_origin) = dep.origin.as_ref() else {
                    return true;
                };
                // FIFO already orders an origin's own events; a self
                // dependency at or past `seq` could never be met.
                same(dep_origin, origin) || self.delivered_of(dep_origin) >= dep.seq
            })
    }

    fn raise(&mut self, origin: &NodeId, seq: u64) {
        let key = origin as &dyn Incarnation;
        match self.delivered.get_mut(key) {
            Some(delivered) if *delivered >= seq => return,
            Some(delivered) => *delivered = seq,
            None if seq == 0 => return,
            None => {
                self.delivered.insert(OriginKey::from(origin), seq);
            }
        }
        if let Some(queue) = self.pending.get_mut(key) {
            let keep = queue.split_off(&(seq + 1));
            self.held -= queue.len();
            *queue = keep;
            if queue.is_empty() {
                self.pending.remove(key);
            }
        }
    }
}

/// The origin and seq of an event, if it has them.
fn identity(event: &Event) -> Option<(&NodeId, u64)> {
    let id = event.id.as_ref()?;
    Some((id.origin.as_ref()?, id.seq))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::core::rng::Rng;
    use crate::proto::EventId;

    #[test]
    fn an_origin_is_found_by_its_node_id_as_by_its_key() {
        use std::hash::BuildHasher;
        let a = NodeId {
            id: "a".into(),
            generation: 2,
        };
        let mut map: FastMap<OriginKey, u64> = FastMap::default();
        map.insert(OriginKey::from(&a), 7);
        assert_eq!(map.get(&a as &dyn Incarnation), Some(&7));
        let later = NodeId {
            generation: 3,
            ..a.clone()
        };
        assert_eq!(map.get(&later as &dyn Incarnation), None);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(
            hasher.hash_one(OriginKey::from(&a)),
            hasher.hash_one(&a as &dyn Incarnation)
        );
    }

    fn node(id: &str) -> NodeId {
        NodeId {
            id: id.into(),
            generation: 1,
        }
    }

    fn mark(origin: &str, seq: u64) -> SeqMark {
        SeqMark {
            origin: Some(node(origin)),
            seq,
        }
    }

    fn event(origin: &str, seq: u64, lamport: u64, deps: Vec<SeqMark>) -> Arc<Event> {
        Arc::new(Event {
            id: Some(EventId {
                origin: Some(node(origin)),
                seq,
            }),
            lamport,
            deps,
            ..Default::default()
        })
    }

    fn drain(hb: &mut HoldBack) -> Vec<(String, u64)> {
        std::iter::from_fn(|| hb.pop_ready())
            .map(|e| {
                let id = e.id.as_ref().unwrap();
                (id.origin.as_ref().unwrap().id.clone(), id.seq)
            })
            .collect()
    }

    fn ids(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|&(o, s)| (o.to_string(), s)).collect()
    }

    #[test]
    fn in_order_events_are_delivered_at_once() {
        let mut hb = HoldBack::new(10);
        for seq in 1..=3 {
            assert_eq!(hb.offer(event("a", seq, seq, vec![])), Offer::Held);
            assert_eq!(drain(&mut hb), ids(&[("a", seq)]));
        }
        assert_eq!(hb.held(), 0);
        assert_eq!(hb.delivered(), [mark("a", 3)]);
    }

    #[test]
    fn reordered_events_are_delivered_fifo_per_origin() {
        let mut hb = HoldBack::new(10);
        hb.offer(event("a", 3, 3, vec![]));
        hb.offer(event("b", 2, 9, vec![]));
        hb.offer(event("a", 2, 2, vec![]));
        assert!(drain(&mut hb).is_empty());
        assert_eq!(hb.held(), 3);
        hb.offer(event("b", 1, 8, vec![]));
        hb.offer(event("a", 1, 1, vec![]));
        // Ties between origins go by Lamport time.
        assert_eq!(
            drain(&mut hb),
            ids(&[("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)])
        );
        assert_eq!(hb.held(), 0);
    }

    #[test]
    fn an_event_waits_for_its_dependencies() {
        let mut hb = HoldBack::new(10);
        // b stamped its first event after delivering a:1.
        hb.offer(event("b", 1, 5, vec![mark("a", 1)]));
        assert!(drain(&mut hb).is_empty(), "a:1 is missing");
        hb.offer(event("a", 1, 3, vec![]));
        assert_eq!(drain(&mut hb), ids(&[("a", 1), ("b", 1)]));
        // A dependency on the event's own origin is FIFO's business.
        hb.offer(event("a", 2, 9, vec![mark("a", 5)]));
        assert_eq!(drain(&mut hb), ids(&[("a", 2)]));
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut hb = HoldBack::new(10);
        hb.offer(event("a", 1, 1, vec![]));
        assert_eq!(hb.offer(event("a", 3, 3, vec![])), Offer::Held);
        assert_eq!(hb.offer(event("a", 3, 3, vec![])), Offer::Duplicate, "held");
        drain(&mut hb);
        assert_eq!(
            hb.offer(event("a", 1, 1, vec![])),
            Offer::Duplicate,
            "delivered"
        );
        assert_eq!(
            hb.offer(event("a", 0, 1, vec![])),
            Offer::Duplicate,
            "seq 0"
        );
        let no_id = Arc::new(Event::default());
        assert_eq!(hb.offer(no_id), Offer::Duplicate);
        let no_origin = Arc::new(Event {
            id: Some(EventId {
                origin: None,
                seq: 1,
            }),
            ..Default::default()
        });
        assert_eq!(hb.offer(no_origin), Offer::Duplicate);
        assert_eq!(hb.held(), 1, "only a:3");
    }

    #[test]
    fn a_full_queue_refuses_events_it_cannot_deliver() {
        let mut hb = HoldBack::new(2);
        assert_eq!(hb.offer(event("a", 3, 3, vec![])), Offer::Held);
        assert_eq!(hb.offer(event("a", 4, 4, vec![])), Offer::Held);
        assert_eq!(hb.offer(event("a", 5, 5, vec![])), Offer::Full);
        assert_eq!(hb.offer(event("b", 1, 1, vec![mark("a", 1)])), Offer::Full);
        assert_eq!(hb.held(), 2, "refused events are not stored");
        // What everything held waits for is still taken in.
        assert_eq!(hb.offer(event("a", 1, 1, vec![])), Offer::Held);
        assert_eq!(hb.offer(event("a", 2, 2, vec![])), Offer::Full);
        assert_eq!(drain(&mut hb), ids(&[("a", 1)]));
        assert_eq!(hb.offer(event("a", 2, 2, vec![])), Offer::Held);
        assert_eq!(drain(&mut hb), ids(&[("a", 2), ("a", 3), ("a", 4)]));
        assert_eq!(hb.offer(event("a", 5, 5, vec![])), Offer::Held);
    }

    #[test]
    fn set_delivered_skips_and_drops_obsolete_events() {
        let mut hb = HoldBack::new(10);
        hb.offer(event("a", 2, 2, vec![]));
        hb.offer(event("a", 4, 4, vec![]));
        hb.offer(event("a", 6, 6, vec![]));
        hb.offer(event("b", 1, 7, vec![mark("a", 5)]));
        // a:1..=4 are reported lost: a:2 and a:4 are obsolete.
        hb.set_delivered(&[mark("a", 4), mark("c", 0)]);
        assert_eq!(hb.held(), 2);
        assert_eq!(hb.offer(event("a", 3, 3, vec![])), Offer::Duplicate);
        hb.offer(event("a", 5, 5, vec![]));
        assert_eq!(drain(&mut hb), ids(&[("a", 5), ("a", 6), ("b", 1)]));
        // Never lowers.
        hb.set_delivered(&[mark("a", 1)]);
        assert_eq!(hb.delivered_of(&OriginKey::from(&node("a"))), 6);
    }

    #[test]
    fn own_events_and_deps() {
        let mut hb = HoldBack::new(10);
        hb.offer(event("a", 1, 1, vec![]));
        drain(&mut hb);
        hb.record_own(&node("me"), 1);
        hb.record_own(&node("me"), 2);
        assert_eq!(hb.delivered(), [mark("a", 1), mark("me", 2)]);
        assert_eq!(hb.deps(&node("me")), [mark("a", 1)]);
        // A new generation is a different origin.
        let me2 = NodeId {
            id: "me".into(),
            generation: 2,
        };
        assert_eq!(hb.deps(&me2).len(), 2);
        let key = OriginKey::from(&me2);
        assert_eq!(key.to_node_id(), me2);
        assert_eq!(hb.delivered_of(&key), 0);
    }

    #[test]
    fn marks_come_sorted_by_origin_then_generation() {
        let mut hb = HoldBack::new(10);
        let node_gen = |id: &str, generation| NodeId {
            id: id.into(),
            generation,
        };
        for (id, generation) in [("c", 1), ("a", 2), ("b", 1), ("a", 1), ("ab", 1)] {
            hb.record_own(&node_gen(id, generation), 3);
        }
        let order: Vec<(String, u64)> = hb
            .delivered()
            .into_iter()
            .map(|m| m.origin.map(|o| (o.id, o.generation)).unwrap())
            .collect();
        let expected = [("a", 1), ("a", 2), ("ab", 1), ("b", 1), ("c", 1)];
        assert_eq!(order, expected.map(|(id, g)| (id.to_string(), g)));
        let deps: Vec<u64> = hb.deps(&node_gen("b", 1)).iter().map(|m| m.seq).collect();
        assert_eq!(deps, [3, 3, 3, 3]);
    }

    /// A simulated origin node: stamps events and receives the others' in
    /// random order through its own hold-back queue.
    struct Origin {
        me: NodeId,
        hb: HoldBack,
        seq: u64,
        lamport: u64,
        inbox: Vec<Arc<Event>>,
    }

    /// A causal history: each origin stamps with deps = its delivered vector.
    fn history(rng: &mut Rng, seed: u64) -> Vec<Arc<Event>> {
        let count = 3 + rng.below(2);
        let mut origins: Vec<Origin> = (0..count)
            .map(|i| Origin {
                me: NodeId {
                    id: format!("o{i}"),
                    generation: 1 + rng.below(2) as u64,
                },
                hb: HoldBack::new(usize::MAX),
                seq: 0,
                lamport: 0,
                inbox: Vec::new(),
            })
            .collect();
        let mut all = Vec::new();
        for _ in 0..40 {
            let o = rng.below(count);
            if rng.below(2) == 0 || origins[o].inbox.is_empty() {
                let origin = &mut origins[o];
                origin.seq += 1;
                origin.lamport += 1;
                let e = Arc::new(Event {
                    id: Some(EventId {
                        origin: Some(origin.me.clone()),
                        seq: origin.seq,
                    }),
                    lamport: origin.lamport,
                    deps: origin.hb.deps(&origin.me),
                    ..Default::default()
                });
                let me = origin.me.clone();
                origin.hb.record_own(&me, origin.seq);
                for (i, other) in origins.iter_mut().enumerate() {
                    if i != o {
                        other.inbox.push(e.clone());
                    }
                }
                all.push(e);
            } else {
                let origin = &mut origins[o];
                let i = rng.below(origin.inbox.len());
                let e = origin.inbox.swap_remove(i);
                assert_eq!(origin.hb.offer(e), Offer::Held, "seed {seed}");
                while let Some(e) = origin.hb.pop_ready() {
                    origin.lamport = origin.lamport.max(e.lamport) + 1;
                }
            }
        }
        all
    }

    #[test]
    fn random_causal_histories_deliver_exactly_once_in_causal_order() {
        for seed in 0..200u64 {
            let mut rng = Rng::new(seed);
            let events = history(&mut rng, seed);
            for round in 0..5 {
                let mut order = events.clone();
                rng.shuffle(&mut order);
                let mut hb = HoldBack::new(events.len());
                let mut shadow: HashMap<OriginKey, u64> = HashMap::new();
                let mut seen: HashSet<(OriginKey, u64)> = HashSet::new();
                for (n, e) in order.iter().enumerate() {
                    assert_eq!(
                        hb.offer(e.clone()),
                        Offer::Held,
                        "seed {seed} round {round}"
                    );
                    if n > 0 && rng.below(4) == 0 {
                        // Re-offer something already offered.
                        let again = order[rng.below(n)].clone();
                        assert_eq!(
                            hb.offer(again),
                            Offer::Duplicate,
                            "seed {seed} round {round}"
                        );
                    }
                    while let Some(d) = hb.pop_ready() {
                        let (origin, seq) = identity(&d).unwrap();
                        let origin = OriginKey::from(origin);
                        let last = shadow.entry(origin.clone()).or_insert(0);
                        assert_eq!(seq, *last + 1, "seed {seed} round {round}: FIFO");
                        *last = seq;
                        for dep in &d.deps {
                            let dep_origin = OriginKey::from(dep.origin.as_ref().unwrap());
                            assert!(
                                shadow.get(&dep_origin).copied().unwrap_or(0) >= dep.seq,
                                "seed {seed} round {round}: {origin:?}:{seq} before dep {dep:?}"
                            );
                        }
                        assert!(
                            seen.insert((origin, seq)),
                            "seed {seed} round {round}: twice"
                        );
                    }
                }
                assert_eq!(seen.len(), events.len(), "seed {seed} round {round}: all");
                assert_eq!(hb.held(), 0, "seed {seed} round {round}");
                let delivered: HashMap<OriginKey, u64> = hb
                    .delivered()
                    .iter()
                    .map(|m| (OriginKey::from(m.origin.as_ref().unwrap()), m.seq))
                    .collect();
                assert_eq!(delivered, shadow, "seed {seed} round {round}");
            }
        }
    }

    #[test]
    fn blocked_on_names_the_missing_events_of_an_origin() {
        let a = NodeId {
            id: "a".into(),
            generation: 1,
        };
        let b = NodeId {
            id: "b".into(),
            generation: 1,
        };
        let mut hb = HoldBack::new(100);
        let waiting = Event {
            id: Some(EventId {
                origin: Some(b.clone()),
                seq: 1,
            }),
            lamport: 9,
            deps: vec![SeqMark {
                origin: Some(a.clone()),
                seq: 4,
            }],
            ..Default::default()
        };
        assert_eq!(hb.offer(Arc::new(waiting)), Offer::Held);
        assert!(hb.pop_ready().is_none());
        assert_eq!(hb.blocked_on(&OriginKey::from(&a)), Some(4));
        assert_eq!(hb.blocked_on(&OriginKey::from(&b)), None);
        hb.set_delivered(&[SeqMark {
            origin: Some(a),
            seq: 4,
        }]);
        assert!(
            hb.pop_ready().is_some(),
            "skipping the lost events releases it"
        );
    }

    #[test]
    fn a_gap_ends_before_the_first_held_event_of_its_origin() {
        let node = |id: &str| NodeId {
            id: id.into(),
            generation: 1,
        };
        let event = |origin: &NodeId, seq: u64, deps: Vec<SeqMark>| {
            Arc::new(Event {
                id: Some(EventId {
                    origin: Some(origin.clone()),
                    seq,
                }),
                lamport: seq,
                deps,
                ..Default::default()
            })
        };
        let (a, b) = (node("a"), node("b"));
        let mut hb = HoldBack::new(100);
        // a:1 is lost; a:2 arrived; b:1 waits for a:2.
        let a2 = SeqMark {
            origin: Some(a.clone()),
            seq: 2,
        };
        assert_eq!(hb.offer(event(&a, 2, vec![])), Offer::Held);
        assert_eq!(hb.offer(event(&b, 1, vec![a2])), Offer::Held);
        let key = OriginKey::from(&a);
        assert_eq!(hb.blocked_on(&key), Some(2));
        assert_eq!(
            hb.gap_end(&key),
            Some(1),
            "a:2 is here: only a:1 is missing"
        );
        hb.set_delivered(&[SeqMark {
            origin: Some(a),
            seq: 1,
        }]);
        let released: Vec<u64> = std::iter::from_fn(|| hb.pop_ready())
            .map(|e| e.id.as_ref().map_or(0, |id| id.seq))
            .collect();
        assert_eq!(released, vec![2, 1], "a:2 is delivered, then b:1");
        assert_eq!(hb.gap_end(&key), None);
    }
}
