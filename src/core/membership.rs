//! Server membership: which nodes make up the cluster, as a state-based CRDT.
//!
//! The view is a map keyed by node id. Each entry is a [`Member`]: the node
//! incarnation (`NodeId { id, generation }`), its address, a state (`Alive`,
//! `Left` after a graceful stop, `Dead` when a peer declared it failed) and a
//! version that grows with every change its owner or a peer makes to it.
//!
//! Views are exchanged whole (gossip, heartbeats, the `ServerJoin` reply) and
//! [`Membership::merge`] keeps, per node id, the greater of the two entries by
//! the lexicographic order (generation, version, state rank `Alive < Left <
//! Dead`), with the address as a last tie-break so that the order is total.
//! Taking a maximum per key is commutative, associative and idempotent, so
//! views converge whatever the order, duplication or batching of the gossip.
//! That is the point: two nodes joining at the same time through different
//! members each reach half the cluster first, and both must survive. Replacing
//! a view by the last list received would silently drop one of them.
//!
//! Nodes are never deleted from the map; a stopped or failed node stays as a
//! `Left` or `Dead` tombstone. Otherwise a peer that has not heard of the
//! death yet would gossip the old `Alive` entry back and resurrect it. With
//! the tombstone, that stale entry is smaller and loses. A restarted node
//! comes back with a higher generation, which beats any entry of its old
//! incarnation, tombstone included. Tombstones cost one entry per node id
//! (not per incarnation), so the map is bounded by the number of ids ever
//! used.
//!
//! The version of a node's own entry is also its heartbeat counter: the node
//! raises it at every heartbeat ([`Membership::beat`]) and the entry travels
//! with every view, so a node hears that a member is running through any
//! member that hears it, not only directly. A member whose version stops
//! growing is unreachable (see [`crate::core::node`]); nothing is written
//! into the view for that, so a node cut off from some members is never
//! removed by them, and it is back as soon as its counter moves again.
//!
//! A node's own entry can be beaten only by the node itself, except in two
//! ways. A `Dead` or `Left` entry of its own incarnation at a higher version
//! (written by an older peer, or gossiped back from before a restart of its
//! view) is refuted: the node takes a version above it, still alive, as
//! SWIM's incarnation numbers do. A newer generation of its id means the
//! node was replaced by a restarted process; that is reported as
//! [`Change::self_removed`].

use std::collections::HashMap;

use crate::proto::{Member, MemberState, NodeId};

/// Builds a membership entry.
pub fn member(node: NodeId, addr: &str, state: MemberState, version: u64) -> Member {
    Member {
        node: Some(node),
        addr: addr.to_string(),
        state: state as i32,
        version,
    }
}

/// What a merge changed, as seen by this node.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    /// Nodes that became alive: a new id, or a newer incarnation of a known one.
    pub added: Vec<Member>,
    /// Nodes that were alive and no longer are (left, dead, or replaced by a
    /// newer incarnation), as they were before the merge.
    pub removed: Vec<Member>,
    /// Alive members whose heartbeat counter (version) grew: they run.
    pub progressed: Vec<NodeId>,
    /// A newer incarnation of this node's id exists: this process was
    /// replaced.
    pub self_removed: bool,
}

/// The nodes a server list names, reachable or not, at most
/// [`crate::core::validate::MAX_KNOWN_NODES`].
fn nodes_of(list: &crate::proto::ServerList) -> Vec<NodeId> {
    list.servers
        .iter()
        .chain(&list.unreachable)
        .filter_map(|s| s.node.clone())
        .take(crate::core::validate::MAX_KNOWN_NODES)
        .collect()
}

/// The nodes a participant knows of once it receives `list`, having known
/// `known` before: the list's nodes, then the nodes it knew that the list
/// does not name, each id at its newest incarnation, at most
/// [`MAX_KNOWN_NODES`](crate::core::validate::MAX_KNOWN_NODES). A node that
/// knows less (across a split) does not make the participant forget a node
/// that may be the only holder of what it saw (see `Resume.known_nodes`).
pub fn learn_nodes(known: &[NodeId], list: &crate::proto::ServerList) -> Vec<NodeId> {
    let mut nodes = nodes_of(list);
    for old in known {
        match nodes.iter_mut().find(|n| n.id == old.id) {
            Some(listed) if listed.generation < old.generation => *listed = old.clone(),
            Some(_) => {}
            None => nodes.push(old.clone()),
        }
    }
    nodes.truncate(crate::core::validate::MAX_KNOWN_NODES);
    nodes
}

/// One node's view of the cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    addr: String,
    /// Keyed by node id; every entry is valid (node set, id non-empty, state
    /// one of Alive, Left, Dead).
    entries: HashMap<String, Member>,
    /// Ids are never reused (every process draws a fresh one): another
    /// generation of a known id is a forgery, ignored, not a restart.
    fixed_generations: bool,
}

impl Membership {
    /// A view holding only this node, alive at version 1.
    pub fn new(me: NodeId, addr: String) -> Self {
        let own = member(me.clone(), &addr, MemberState::Alive, 1);
        let mut entries = HashMap::new();
        entries.insert(me.id.clone(), own);
        Self {
            me,
            addr,
            entries,
            fixed_generations: false,
        }
    }

    /// A node draws a fresh id per process unless it was given one
    /// (`--node-id`), so a known id gets a new generation only from the new
    /// process itself ([`Membership::merge_direct`]): an entry in another
    /// member's view that says so is ignored (a peer cannot make a node step
    /// aside for an invented newer process of it by gossip).
    pub fn fix_generations(&mut self) {
        self.fixed_generations = true;
    }

    /// Whether entries of known ids are kept to their generation (see
    /// [`Membership::fix_generations`]).
    pub fn generations_fixed(&self) -> bool {
        self.fixed_generations
    }

    /// The process this view holds as alive under `id`, if any.
    pub fn alive_incarnation(&self, id: &str) -> Option<&NodeId> {
        self.entries
            .get(id)
            .filter(|m| is_alive_entry(m))
            .and_then(|m| m.node.as_ref())
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Merges a remote view (whole or partial) into this one.
    pub fn merge(&mut self, remote: &[Member]) -> Change {
        self.merge_from(remote, false)
    }

    /// Merges the entry of the process that sent it (its ServerJoin, or the
    /// hello of its relay link): a newer process of a known id, restarted
    /// in place with the same `--node-id`, replaces the earlier one.
    pub fn merge_direct(&mut self, own_entry: Member) -> Change {
        self.merge_from(std::slice::from_ref(&own_entry), true)
    }

    fn merge_from(&mut self, remote: &[Member], direct: bool) -> Change {
        // What each touched id held before this merge: the change is reported
        // between before and after, so a remote list naming one id twice (or
        // an incarnation that is replaced within the same list) is reported
        // once, as its net effect.
        let mut before: HashMap<String, Option<Member>> = HashMap::new();
        for entry in remote.iter().take(MAX_MEMBERS) {
            let Some(id) = valid_id(entry, &self.me) else {
                continue;
            };
            let current = self.entries.get(id);
            if current.is_some_and(|c| order_key(c) >= order_key(entry)) {
                continue;
            }
            if self.fixed_generations && !direct && current.is_some_and(|c| c.node != entry.node) {
                tracing::warn!(
                    id,
                    "ignoring a membership entry for another process of a known node id (ids are never reused)"
                );
                continue;
            }
            before
                .entry(id.to_string())
                .or_insert_with(|| current.cloned());
            self.entries.insert(id.to_string(), entry.clone());
        }

        let mut touched: Vec<(String, Option<Member>)> = before.into_iter().collect();
        touched.sort_by(|a, b| a.0.cmp(&b.0));
        let mut change = Change::default();
        for (id, old) in touched {
            let new = &self.entries[&id];
            if id == self.me.id {
                // Our entry only changes here when a remote one beat it: a
                // greater generation (we are a stale incarnation) or our own
                // generation marked Left/Dead at a greater version, which we
                // refute unless we are leaving.
                let same = new.node.as_ref() == Some(&self.me);
                let we_left = old.as_ref().is_some_and(|o| !is_alive_entry(o));
                if same && !is_alive_entry(new) && !we_left {
                    let version = new.version + 1;
                    self.entries.insert(
                        id,
                        member(self.me.clone(), &self.addr, MemberState::Alive, version),
                    );
                    continue;
                }
                change.self_removed |= !same;
                continue;
            }
            let old = old.filter(is_alive_entry);
            let new = is_alive_entry(new).then(|| new.clone());
            match (old, new) {
                // Same incarnation still alive: its counter moved.
                (Some(old), Some(new)) if old.node == new.node => {
                    change.progressed.extend(new.node);
                }
                (old, new) => {
                    change.removed.extend(old);
                    change.added.extend(new);
                }
            }
        }
        change
    }

    /// This node runs: its heartbeat counter goes up by one. Returns its
    /// entry (unchanged once it left, or if a newer incarnation replaced it).
    pub fn beat(&mut self) -> Member {
        match self.entries.get_mut(&self.me.id) {
            Some(own) if own.node.as_ref() == Some(&self.me) => {
                if is_alive_entry(own) {
                    own.version += 1;
                }
                own.clone()
            }
            _ => member(self.me.clone(), &self.addr, MemberState::Left, 0),
        }
    }

    /// This node stops gracefully: its entry becomes `Left` at the next
    /// version. Returns the entry to gossip. Calling it again returns the same
    /// entry. If a newer incarnation of our id already replaced us, the
    /// returned entry is not stored and loses every merge, which is right: the
    /// newer incarnation is not leaving.
    pub fn leave(&mut self) -> Member {
        match self.entries.get_mut(&self.me.id) {
            Some(own) if own.node.as_ref() == Some(&self.me) => {
                if is_alive_entry(own) {
                    own.state = MemberState::Left as i32;
                    own.version += 1;
                }
                own.clone()
            }
            _ => member(self.me.clone(), &self.addr, MemberState::Left, 0),
        }
    }

    /// The address this view has for node id `id` ("?" if none): log lines
    /// name a peer by it as well as by its id.
    pub fn addr_of(&self, id: &str) -> &str {
        self.entries.get(id).map_or("?", |e| e.addr.as_str())
    }

    /// How `node` left this view: `left` (it stopped gracefully), `failed`
    /// (declared dead), `replaced` (a newer process took its id over).
    pub fn departure(&self, node: &NodeId) -> &'static str {
        match self.entries.get(&node.id) {
            Some(e)
                if e.node
                    .as_ref()
                    .is_some_and(|n| n.generation > node.generation) =>
            {
                "replaced"
            }
            Some(e) if e.state == MemberState::Dead as i32 => "failed",
            _ => "left",
        }
    }

    /// Whether this exact incarnation is alive in this view.
    pub fn is_alive(&self, node: &NodeId) -> bool {
        self.entries
            .get(&node.id)
            .is_some_and(|e| is_alive_entry(e) && e.node.as_ref() == Some(node))
    }

    /// Whether this view has heard of `node`: an entry for its id, of its
    /// incarnation or a newer one (alive or not).
    pub fn has_heard_of(&self, node: &NodeId) -> bool {
        self.entries.get(&node.id).is_some_and(|e| {
            e.node
                .as_ref()
                .is_some_and(|n| n.generation >= node.generation)
        })
    }

    /// Every alive node, ourselves included, sorted by node id.
    pub fn alive(&self) -> Vec<Member> {
        self.sorted(is_alive_entry)
    }

    /// Every alive node but ourselves, sorted by node id.
    pub fn peers(&self) -> Vec<Member> {
        self.sorted(|e| is_alive_entry(e) && entry_id(e) != self.me.id)
    }

    /// Every entry, tombstones included, sorted by node id: the view to gossip.
    pub fn snapshot(&self) -> Vec<Member> {
        self.sorted(|_| true)
    }

    /// The alive node with the smallest id. Every node with the same view
    /// picks the same one, so exactly one of them announces what follows from
    /// a node's death (its participants leaving). Falls back to ourselves when
    /// nothing is alive (we left).
    pub fn announcer(&self) -> NodeId {
        self.announcer_among(|_| true)
    }

    /// [`Membership::announcer`] among the alive nodes that `counts` keeps
    /// (the ones a node reaches: each side of a split has its own).
    pub fn announcer_among(&self, counts: impl Fn(&NodeId) -> bool) -> NodeId {
        self.entries
            .values()
            .filter(|e| is_alive_entry(e))
            .filter_map(|e| e.node.as_ref())
            .filter(|n| counts(n))
            .min_by(|a, b| a.id.cmp(&b.id))
            .cloned()
            .unwrap_or_else(|| self.me.clone())
    }

    fn sorted(&self, keep: impl Fn(&Member) -> bool) -> Vec<Member> {
        let mut list: Vec<Member> = self.entries.values().filter(|e| keep(e)).cloned().collect();
        list.sort_by(|a, b| entry_id(a).cmp(entry_id(b)));
        list
    }
}

/// Rank of a state in the merge order; `None` for states that are not valid
/// in an entry (unspecified or unknown), which are ignored.
fn rank(state: i32) -> Option<u8> {
    match MemberState::try_from(state) {
        Ok(MemberState::Alive) => Some(0),
        Ok(MemberState::Left) => Some(1),
        Ok(MemberState::Dead) => Some(2),
        _ => None,
    }
}

/// The node id of an entry that may be merged, or `None` if it is malformed.
/// Highest version an entry may carry: a heartbeat counter at 8 beats a
/// second reaches it in a million years, and adding one never overflows.
pub const MAX_VERSION: u64 = 1 << 48;
/// How far past this node's own generation (a start time in milliseconds)
/// another's may be: ten years. A forged generation far in the future
/// would otherwise outrank every real restart of that node forever.
const MAX_GENERATION_LEAD: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Most entries taken from one remote view.
const MAX_MEMBERS: usize = 1024;
/// Longest node id and address accepted from a peer.
const MAX_ID_BYTES: usize = 64;
const MAX_ADDR_BYTES: usize = 256;

/// The id of `entry`, if it is one this node accepts: a known state, an
/// id and address of sane length, version and generation within bounds.
fn valid_id<'a>(entry: &'a Member, me: &NodeId) -> Option<&'a str> {
    let node = entry.node.as_ref()?;
    rank(entry.state)?;
    let sane = !node.id.is_empty()
        && node.id.len() <= MAX_ID_BYTES
        && entry.addr.len() <= MAX_ADDR_BYTES
        && entry.version <= MAX_VERSION
        && node.generation <= me.generation.saturating_add(MAX_GENERATION_LEAD);
    if !sane {
        tracing::warn!(id = %node.id.chars().take(MAX_ID_BYTES).collect::<String>(), version = entry.version, generation = node.generation, "ignoring a membership entry out of bounds");
    }
    sane.then_some(node.id.as_str())
}

/// The merge order: (generation, version, state rank, address).
fn order_key(entry: &Member) -> (u64, u64, u8, &str) {
    let generation = entry.node.as_ref().map_or(0, |n| n.generation);
    let rank = rank(entry.state).unwrap_or(0);
    (generation, entry.version, rank, entry.addr.as_str())
}

fn is_alive_entry(entry: &Member) -> bool {
    entry.state == MemberState::Alive as i32
}

fn entry_id(entry: &Member) -> &str {
    entry.node.as_ref().map_or("", |n| n.id.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::core::rng::Rng;

    fn node(id: &str, generation: u64) -> NodeId {
        NodeId {
            id: id.into(),
            generation,
        }
    }

    #[test]
    fn a_server_list_adds_to_the_nodes_a_participant_knows() {
        let list = |nodes: &[NodeId]| crate::proto::ServerList {
            servers: nodes[..1]
                .iter()
                .map(|n| crate::proto::ServerInfo {
                    node: Some(n.clone()),
                    addr: format!("{}:1", n.id),
                })
                .collect(),
            unreachable: nodes[1..]
                .iter()
                .map(|n| crate::proto::ServerInfo {
                    node: Some(n.clone()),
                    addr: format!("{}:1", n.id),
                })
                .collect(),
        };
        // Known through its first node: a, b restarted (generation 2), c.
        let known = learn_nodes(&[], &list(&[node("a", 1), node("b", 2), node("c", 1)]));
        assert_eq!(known, [node("a", 1), node("b", 2), node("c", 1)]);
        // Its next node, across a split, knows only b's older incarnation,
        // and d: b stays at generation 2, and c is not forgotten.
        let known = learn_nodes(&known, &list(&[node("d", 1), node("b", 1)]));
        assert_eq!(
            known,
            [node("d", 1), node("b", 2), node("a", 1), node("c", 1)]
        );
        // A newer incarnation replaces an older one.
        let known = learn_nodes(&known, &list(&[node("c", 3)]));
        assert_eq!(
            known,
            [node("c", 3), node("d", 1), node("b", 2), node("a", 1)]
        );
        // Bounded as a resume's known_nodes are.
        let many: Vec<NodeId> = (0..100).map(|i| node(&format!("n{i}"), 1)).collect();
        let known = learn_nodes(&known, &list(&many));
        assert_eq!(known.len(), crate::core::validate::MAX_KNOWN_NODES);
        assert_eq!(known[0], node("n0", 1));
    }

    fn start(id: &str, generation: u64) -> Membership {
        Membership::new(node(id, generation), format!("{id}:{generation}"))
    }

    /// `joiner` joins through `via`: the member merges the joiner's entry and
    /// the joiner takes the member's view (the `ServerJoin` exchange).
    fn join(joiner: &mut Membership, via: &mut Membership) {
        via.merge(&joiner.snapshot());
        joiner.merge(&via.snapshot());
    }

    /// Push-pull gossip from `a` to `b` and back.
    fn gossip(a: &mut Membership, b: &mut Membership) {
        b.merge(&a.snapshot());
        a.merge(&b.snapshot());
    }

    #[test]
    fn entries_out_of_bounds_are_ignored() {
        let mut a = start("a", 1000);
        let mut b = start("b", 1001);
        join(&mut b, &mut a);
        // A forged view: a dead at an absurd version, b at a version and
        // a newer generation that would outrank every real one.
        let forged = [
            member(node("a", 1000), "a:1000", MemberState::Dead, 1 << 62),
            member(node("b", 1001), "b:1001", MemberState::Dead, u64::MAX),
            member(node("b", u64::MAX), "b:x", MemberState::Alive, 1),
            member(node(&"c".repeat(65), 1), "c:1", MemberState::Alive, 1),
        ];
        let change = a.merge(&forged);
        assert!(!change.self_removed);
        assert!(
            change.removed.is_empty() && change.added.is_empty(),
            "{change:?}"
        );
        assert!(a.is_alive(&node("a", 1000)) && a.is_alive(&node("b", 1001)));
        assert!(
            a.snapshot().iter().all(|m| m.version <= MAX_VERSION),
            "no version past the bound: {:?}",
            a.snapshot()
        );
        // Within bounds, a Dead of a's own live incarnation is refuted.
        let change = a.merge(&[member(node("a", 1000), "a:1000", MemberState::Dead, 50)]);
        assert!(!change.self_removed);
        assert!(a.is_alive(&node("a", 1000)));
    }

    #[test]
    fn with_fixed_generations_no_peer_invents_a_newer_process_of_a_node() {
        let mut a = start("a", 1000);
        let mut b = start("b", 1001);
        join(&mut b, &mut a);
        a.fix_generations();
        let forged = [
            member(node("a", 1001), "a:x", MemberState::Alive, 1),
            member(node("b", 1002), "b:x", MemberState::Alive, 1),
        ];
        let change = a.merge(&forged);
        assert!(!change.self_removed, "a does not step aside");
        assert!(change.removed.is_empty(), "b stays: {change:?}");
        assert!(a.is_alive(&node("a", 1000)) && a.is_alive(&node("b", 1001)));
        // The newer process itself (a node restarted with its --node-id)
        // replaces the old one when it calls.
        let change = a.merge_direct(member(node("b", 1002), "b:2", MemberState::Alive, 1));
        assert_eq!(change.removed.len(), 1, "{change:?}");
        assert!(a.is_alive(&node("b", 1002)) && !a.is_alive(&node("b", 1001)));
        // Without it (the simulator restarts nodes under their id), a newer
        // process replaces the old one.
        let mut c = start("c", 1000);
        assert!(
            c.merge(&[member(node("c", 1001), "c:2", MemberState::Alive, 1)])
                .self_removed
        );
    }

    fn ids(list: &[Member]) -> Vec<(String, u64)> {
        list.iter()
            .map(|m| {
                let n = m.node.as_ref().unwrap();
                (n.id.clone(), n.generation)
            })
            .collect()
    }

    #[test]
    fn joins_through_different_members_converge() {
        let mut a = start("a", 1);
        let mut b = start("b", 1);
        join(&mut b, &mut a);
        // c and d join at the same time, c through a and d through b.
        let mut c = start("c", 1);
        let mut d = start("d", 1);
        join(&mut c, &mut a);
        join(&mut d, &mut b);
        assert_eq!(ids(&a.alive()).len(), 3, "a has not heard of d yet");
        assert_eq!(ids(&b.alive()).len(), 3, "b has not heard of c yet");

        // b's list reaching a must not drop c (no "last list wins").
        let change = a.merge(&b.snapshot());
        assert_eq!(ids(&change.added), [("d".to_string(), 1)]);
        assert!(change.removed.is_empty());
        gossip(&mut d, &mut c);
        gossip(&mut b, &mut c);

        let expected = a.snapshot();
        for view in [&a, &b, &c, &d] {
            assert_eq!(view.snapshot(), expected, "view of {:?}", view.me());
        }
        assert_eq!(ids(&expected).len(), 4);
        assert_eq!(
            ids(&c.peers()),
            [("a".into(), 1), ("b".into(), 1), ("d".into(), 1)]
        );
        assert_eq!(c.announcer(), node("a", 1));
    }

    #[test]
    fn a_stale_alive_update_does_not_resurrect_a_node_that_left() {
        let mut a = start("a", 1);
        let mut b = start("b", 1);
        let mut c = start("c", 1);
        join(&mut b, &mut a);
        join(&mut c, &mut a);
        b.merge(&a.snapshot());
        let stale = b.snapshot();

        let left = c.leave();
        let change = a.merge(std::slice::from_ref(&left));
        assert_eq!(ids(&change.removed), [("c".to_string(), 1)]);
        assert_eq!(a.merge(&stale), Change::default());
        assert!(!a.is_alive(&node("c", 1)));

        // b hears of it and reports it; a later stale list is ignored.
        let change = b.merge(&a.snapshot());
        assert_eq!(ids(&change.removed), [("c".to_string(), 1)]);
        assert!(change.added.is_empty());
        assert_eq!(b.merge(&stale), Change::default());
        assert_eq!(ids(&b.alive()), [("a".into(), 1), ("b".into(), 1)]);
        assert!(
            b.snapshot()
                .iter()
                .any(|m| m.state == MemberState::Left as i32),
            "the tombstone is kept"
        );
    }

    #[test]
    fn heartbeats_are_reported_as_progress_through_any_member() {
        let mut a = start("a", 1);
        let mut b = start("b", 1);
        let mut c = start("c", 1);
        join(&mut b, &mut a);
        join(&mut c, &mut a);
        gossip(&mut a, &mut b);
        // c beats; only a hears it directly, b hears it through a.
        let beat = c.beat();
        assert_eq!(beat.version, 2);
        let change = a.merge(&c.snapshot());
        assert_eq!(change.progressed, [node("c", 1)]);
        assert!(change.added.is_empty() && change.removed.is_empty());
        let change = b.merge(&a.snapshot());
        assert_eq!(change.progressed, [node("c", 1)]);
        assert_eq!(b.merge(&a.snapshot()), Change::default(), "no news twice");
    }

    #[test]
    fn a_newer_generation_replaces_the_old_incarnation() {
        let mut a = start("a", 1);
        let mut b = start("b", 1);
        let mut c1 = start("c", 1);
        join(&mut b, &mut a);
        join(&mut c1, &mut a);
        b.merge(&a.snapshot());
        c1.leave();
        a.merge(&c1.snapshot());

        // c restarts with generation 2 and joins through a, which saw the old
        // incarnation go: only the new one is reported.
        let mut c2 = start("c", 2);
        let change = a.merge(&c2.snapshot());
        assert_eq!(ids(&change.added), [("c".to_string(), 2)]);
        assert!(change.removed.is_empty());
        c2.merge(&a.snapshot());

        // b still had generation 1 alive: it is removed and the new one added.
        let change = b.merge(&a.snapshot());
        assert_eq!(ids(&change.removed), [("c".to_string(), 1)]);
        assert_eq!(ids(&change.added), [("c".to_string(), 2)]);
        assert!(b.is_alive(&node("c", 2)));
        assert!(!b.is_alive(&node("c", 1)));

        // Neither the old incarnation alive nor its tombstone beats generation 2.
        assert_eq!(b.merge(&c1.snapshot()), Change::default());
        assert!(b.is_alive(&node("c", 2)));
    }

    #[test]
    fn a_false_death_is_refuted_and_only_a_newer_incarnation_removes_us() {
        let mut a = start("a", 1);
        let mut b = start("b", 1);
        join(&mut b, &mut a);

        // A stale or equal entry about ourselves changes nothing.
        let stale = vec![member(node("b", 1), "b:1", MemberState::Alive, 1)];
        assert_eq!(b.merge(&stale), Change::default());
        assert_eq!(
            b.merge(&[member(node("b", 0), "old", MemberState::Dead, 9)]),
            Change::default()
        );

        // Declared dead (by an older peer): refuted with a higher version,
        // which beats the death everywhere.
        let dead = member(node("b", 1), "b:1", MemberState::Dead, 7);
        let change = b.merge(std::slice::from_ref(&dead));
        assert!(!change.self_removed);
        assert!(b.is_alive(&node("b", 1)));
        a.merge(std::slice::from_ref(&dead));
        assert!(!a.is_alive(&node("b", 1)));
        let change = a.merge(&b.snapshot());
        assert_eq!(ids(&change.added), [("b".to_string(), 1)]);
        assert!(a.is_alive(&node("b", 1)));

        // Superseded by a newer incarnation of our id.
        let mut b1 = start("b", 1);
        let change = b1.merge(&[member(node("b", 2), "b:2", MemberState::Alive, 1)]);
        assert!(change.self_removed);
        assert!(
            change.added.is_empty(),
            "our id is never reported: {change:?}"
        );
        assert_eq!(b1.leave().version, 0, "a stale incarnation leaves nothing");
        assert_eq!(b1.beat().version, 0, "nor beats");
    }

    #[test]
    fn leave() {
        let mut a = start("a", 1);
        let mut b = start("b", 1);
        join(&mut b, &mut a);
        let left = b.leave();
        assert_eq!(left.state, MemberState::Left as i32);
        assert_eq!(left.version, 2);
        assert_eq!(b.leave(), left, "leaving twice changes nothing");
        assert_eq!(b.announcer(), node("a", 1));

        let change = a.merge(std::slice::from_ref(&left));
        assert_eq!(ids(&change.removed), [("b".to_string(), 1)]);
        assert_eq!(ids(&a.peers()), Vec::<(String, u64)>::new());

        assert_eq!(b.beat().version, 2, "a node that left beats no more");
        assert_eq!(a.announcer(), node("a", 1));
        let mut z = start("z", 1);
        z.leave();
        assert_eq!(z.announcer(), node("z", 1), "falls back to ourselves");
    }

    #[test]
    fn malformed_entries_are_ignored() {
        let mut a = start("a", 1);
        let before = a.snapshot();
        let junk = vec![
            Member {
                node: None,
                addr: "x".into(),
                state: MemberState::Alive as i32,
                version: 5,
            },
            member(node("", 3), "y", MemberState::Alive, 5),
            member(node("q", 3), "y", MemberState::Unspecified, 5),
            Member {
                node: Some(node("r", 1)),
                addr: "r".into(),
                state: 42,
                version: 1,
            },
        ];
        assert_eq!(a.merge(&junk), Change::default());
        assert_eq!(a.snapshot(), before);
    }

    #[test]
    fn merge_is_idempotent_commutative_and_associative() {
        let x = vec![
            member(node("a", 1), "a", MemberState::Alive, 1),
            member(node("b", 1), "b", MemberState::Dead, 2),
            member(node("c", 2), "c", MemberState::Alive, 1),
        ];
        let y = vec![
            member(node("a", 1), "a", MemberState::Left, 2),
            member(node("b", 1), "b", MemberState::Alive, 1),
            member(node("c", 1), "c", MemberState::Dead, 5),
            member(node("d", 1), "d", MemberState::Alive, 1),
        ];
        let z = vec![
            member(node("b", 2), "b2", MemberState::Alive, 1),
            member(node("d", 1), "d", MemberState::Dead, 1),
            // Same rank order key but another address: the tie-break decides.
            member(node("e", 1), "e1", MemberState::Alive, 1),
        ];
        let z2 = vec![member(node("e", 1), "e0", MemberState::Alive, 1)];
        let lists = [&x, &y, &z, &z2];

        let apply = |order: &[usize]| {
            let mut m = start("m", 1);
            for &i in order {
                m.merge(lists[i]);
            }
            m.snapshot()
        };
        let reference = apply(&[0, 1, 2, 3]);
        for order in [[3, 2, 1, 0], [1, 0, 3, 2], [2, 0, 3, 1], [3, 1, 0, 2]] {
            assert_eq!(apply(&order), reference, "order {order:?}");
        }
        assert_eq!(apply(&[2, 0, 0, 3, 1, 2, 3, 1]), reference, "duplicates");

        // Associativity: merging a merged view equals merging the parts.
        let mut xy = start("m", 1);
        xy.merge(&x);
        xy.merge(&y);
        let mut grouped = start("m", 1);
        grouped.merge(&z);
        grouped.merge(&z2);
        grouped.merge(&xy.snapshot());
        assert_eq!(grouped.snapshot(), reference);

        // Idempotence: merging a view into itself, or twice, changes nothing.
        let mut m = start("m", 1);
        m.merge(&x);
        let once = m.snapshot();
        assert_eq!(m.merge(&x), Change::default());
        assert_eq!(m.merge(&once), Change::default());
        assert_eq!(m.snapshot(), once);
    }

    /// One simulated process: its view plus what the test checks about it.
    struct Proc {
        view: Membership,
        /// The alive peers as told by the `Change`s it received.
        told: HashSet<(String, u64)>,
        /// Incarnations this view has ever held as not alive (or superseded).
        buried: HashSet<(String, u64)>,
        /// Per id, the greatest order key seen, to check monotonicity.
        high: HashMap<String, (u64, u64, u8, String)>,
        saw_self_removed: bool,
        left: bool,
    }

    impl Proc {
        fn new(view: Membership) -> Self {
            let mut p = Self {
                view,
                told: HashSet::new(),
                buried: HashSet::new(),
                high: HashMap::new(),
                saw_self_removed: false,
                left: false,
            };
            p.check(0);
            p
        }

        fn merge(&mut self, remote: &[Member], seed: u64) {
            let change = self.view.merge(remote);
            self.saw_self_removed |= change.self_removed;
            for m in &change.removed {
                let key = ids(std::slice::from_ref(m)).remove(0);
                assert!(
                    self.told.remove(&key),
                    "seed {seed}: removed unknown {key:?}"
                );
            }
            for m in &change.added {
                let key = ids(std::slice::from_ref(m)).remove(0);
                assert!(
                    self.told.insert(key.clone()),
                    "seed {seed}: added twice {key:?}"
                );
            }
            self.check(seed);
        }

        /// Invariants after every step.
        fn check(&mut self, seed: u64) {
            let me = self.view.me().id.clone();
            let peers: HashSet<(String, u64)> = ids(&self.view.peers()).into_iter().collect();
            assert_eq!(
                self.told, peers,
                "seed {seed}: changes of {me} disagree with its view"
            );
            for entry in self.view.snapshot() {
                let n = entry.node.clone().unwrap();
                let key = order_key(&entry);
                let key = (key.0, key.1, key.2, key.3.to_string());
                if let Some(high) = self.high.get(&n.id) {
                    assert!(
                        &key >= high,
                        "seed {seed}: {me}'s entry for {} went back",
                        n.id
                    );
                }
                self.high.insert(n.id.clone(), key);
                let incarnation = (n.id.clone(), n.generation);
                if is_alive_entry(&entry) {
                    assert!(
                        !self.buried.contains(&incarnation),
                        "seed {seed}: {me} resurrected {incarnation:?}"
                    );
                } else {
                    self.buried.insert(incarnation);
                }
                for g in 0..n.generation {
                    self.buried.insert((n.id.clone(), g));
                }
            }
        }
    }

    #[test]
    fn random_schedules_converge() {
        const NODES: usize = 5;
        const STEPS: usize = 120;
        for seed in 0..200u64 {
            let mut rng = Rng::new(seed);
            let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
            let mut generation = [0u64; NODES];
            // Current process per id (None until first started); replaced
            // processes keep running as stale incarnations that still gossip.
            let mut current: Vec<Option<Proc>> = (0..NODES).map(|_| None).collect();
            let mut stale: Vec<Proc> = Vec::new();
            generation[0] = 1;
            current[0] = Some(Proc::new(start(&names[0], 1)));

            for _ in 0..STEPS {
                let started: Vec<usize> = (0..NODES).filter(|&i| current[i].is_some()).collect();
                match rng.below(10) {
                    // Gossip a random subset of one view to another process.
                    0..=4 => {
                        let from = started[rng.below(started.len())];
                        let mut subset = current[from].as_ref().unwrap().view.snapshot();
                        subset.retain(|_| rng.chance(60));
                        if !stale.is_empty() && rng.chance(15) {
                            let s = rng.below(stale.len());
                            stale[s].merge(&subset, seed);
                            continue;
                        }
                        let to = started[rng.below(started.len())];
                        current[to].as_mut().unwrap().merge(&subset, seed);
                    }
                    // A stale incarnation gossips its old view.
                    5 if !stale.is_empty() => {
                        let s = rng.below(stale.len());
                        let list = stale[s].view.snapshot();
                        let to = started[rng.below(started.len())];
                        current[to].as_mut().unwrap().merge(&list, seed);
                    }
                    // A node beats (its heartbeat counter grows).
                    5 | 6 => {
                        let by = started[rng.below(started.len())];
                        let p = current[by].as_mut().unwrap();
                        p.view.beat();
                        p.check(seed);
                    }
                    // A node starts, or restarts with the next generation,
                    // joining through a random started node.
                    7 | 8 => {
                        let i = rng.below(NODES);
                        let via = started[rng.below(started.len())];
                        if via == i {
                            continue;
                        }
                        generation[i] += 1;
                        let mut fresh = Proc::new(start(&names[i], generation[i]));
                        let entry = fresh.view.snapshot();
                        current[via].as_mut().unwrap().merge(&entry, seed);
                        let view = current[via].as_ref().unwrap().view.snapshot();
                        fresh.merge(&view, seed);
                        if let Some(old) = current[i].replace(fresh) {
                            stale.push(old);
                        }
                    }
                    // A node leaves gracefully and tells one peer.
                    _ => {
                        let i = started[rng.below(started.len())];
                        let p = current[i].as_mut().unwrap();
                        let left = p.view.leave();
                        p.left = true;
                        p.check(seed);
                        let to = started[rng.below(started.len())];
                        current[to].as_mut().unwrap().merge(&[left], seed);
                    }
                }
            }

            // Final all-pairs gossip: everyone pushes to everyone, twice so
            // that what arrived late in the first round spreads too.
            let mut procs: Vec<Proc> = current.into_iter().flatten().collect();
            procs.append(&mut stale);
            for _ in 0..2 {
                for a in 0..procs.len() {
                    for b in 0..procs.len() {
                        if a != b {
                            let list = procs[a].view.snapshot();
                            procs[b].merge(&list, seed);
                        }
                    }
                }
            }
            let expected = procs[0].view.snapshot();
            for p in &procs {
                assert_eq!(
                    p.view.snapshot(),
                    expected,
                    "seed {seed}: view of {:?} differs",
                    p.view.me()
                );
                if !p.view.alive().is_empty() {
                    // (With nothing alive each falls back to itself.)
                    assert_eq!(p.view.announcer(), procs[0].view.announcer(), "seed {seed}");
                }
                let me = p.view.me();
                if !p.view.is_alive(me) && !p.left {
                    assert!(
                        p.saw_self_removed,
                        "seed {seed}: {me:?} was removed without being told"
                    );
                }
            }
            // At most one incarnation per id, and each is the newest started.
            for m in &expected {
                let n = m.node.as_ref().unwrap();
                let i: usize = n.id[1..].parse().unwrap();
                assert_eq!(n.generation, generation[i], "seed {seed}: {n:?}");
            }
        }
    }
}
