//! The participants a node knows of, cluster-wide, and who holds each name.
//!
//! Names are unique as far as a node can know, compared by their skeleton
//! (`core/names.rs`): no two live participants have names a reader cannot
//! tell apart ("Alice" and "ALICE" or "Аlice" with a Cyrillic А are one
//! name). Two nodes admitting the same name, or look-alikes, at the same moment is resolved by one rule applied everywhere: the
//! participant whose "joined" event has the smaller (Lamport time, origin node
//! id, participant id) keeps the name; the other one's home node ends its
//! session and announces it as left. Kept apart from the chat state machine so
//! that this rule reads, and is tested, on its own.

use std::time::Duration;

use tokio::time::Instant;

use crate::core::{FastMap, names};
use crate::proto::{NodeId, Participant};

/// A participant known to this node.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub home: NodeId,
    /// (Lamport time, origin id) of the "joined" event: the name tie-break.
    joined: (u64, String),
    /// (Lamport time, origin id) of the event that set `home` (the join, or
    /// the latest "moved"): of two moves delivered in either order, every
    /// node keeps the later by this order, so all agree on the home.
    pub homed: (u64, String),
    /// The local session currently attached, if any (a counter value, so a
    /// stale session that closes late cannot end a newer one).
    pub session: Option<u64>,
    /// Set on the home node when the session ended without a Leave: the
    /// participant is announced as left if it does not resume in time.
    pub detached: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Roster {
    /// Keyed by participant id.
    members: FastMap<String, Member>,
    /// Name skeleton ([`names::skeleton`]) to the participant id holding it.
    by_name: FastMap<String, String>,
}

impl Roster {
    pub fn get(&self, participant_id: &str) -> Option<&Member> {
        self.members.get(participant_id)
    }

    pub fn get_mut(&mut self, participant_id: &str) -> Option<&mut Member> {
        self.members.get_mut(participant_id)
    }

    pub fn contains(&self, participant_id: &str) -> bool {
        self.members.contains_key(participant_id)
    }

    /// How many participants are live.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The name, as typed, of the live participant holding `name` or a
    /// look-alike of it (same [`names::skeleton`]).
    pub fn resembles(&self, name: &str) -> Option<&str> {
        let holder = self.by_name.get(&names::skeleton(name))?;
        self.members.get(holder).map(|m| m.name.as_str())
    }

    /// The participant id of the live participant holding `name` or a
    /// look-alike of it.
    pub fn holder_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(&names::skeleton(name)).map(String::as_str)
    }

    /// When the holder of `name` lost its session here: set on its home
    /// node while it may still resume.
    pub fn name_detached_at(&self, name: &str) -> Option<Instant> {
        let id = self.by_name.get(&names::skeleton(name))?;
        self.members.get(id)?.detached
    }

    /// Whether `participant_id` holds its name (it did not lose a clash).
    pub fn holds_name(&self, participant_id: &str) -> bool {
        self.members.get(participant_id).is_some_and(|m| {
            self.by_name
                .get(&names::skeleton(&m.name))
                .map(String::as_str)
                == Some(participant_id)
        })
    }

    /// Whether `participant_id` has a session attached to this node.
    pub fn has_local_session(&self, participant_id: &str) -> bool {
        self.members
            .get(participant_id)
            .is_some_and(|m| m.session.is_some())
    }

    /// Adds a participant whose "joined" event, stamped by `home` at
    /// `lamport`, was delivered. If another one held the name, the tie-break
    /// decides who keeps it; returns the loser (id, local session) if it has a
    /// session on this node.
    pub fn joined(
        &mut self,
        participant_id: &str,
        name: &str,
        home: NodeId,
        lamport: u64,
    ) -> Option<(String, u64)> {
        let pid = participant_id.to_string();
        let mut joined = (lamport, home.id.clone());
        match self.members.get_mut(&pid) {
            // Announced again while on the roster: two nodes announced it
            // back after a split, or one did while another resumed it. As
            // for two moves, the later event by (Lamport time, origin) names
            // its home on every node, whatever the delivery order, and the
            // later "joined" is the one the name tie-break compares.
            Some(member) => {
                if joined > member.homed {
                    member.home = home;
                    member.homed = joined.clone();
                    member.session = None;
                    member.detached = None;
                }
                if joined > member.joined {
                    member.joined = joined.clone();
                } else {
                    joined = member.joined.clone();
                }
            }
            None => {
                self.members.insert(
                    pid.clone(),
                    Member {
                        name: name.to_string(),
                        home,
                        homed: joined.clone(),
                        joined: joined.clone(),
                        session: None,
                        detached: None,
                    },
                );
            }
        }
        let key = names::skeleton(name);
        let Some(holder) = self.by_name.get(&key).cloned() else {
            self.by_name.insert(key, pid);
            return None;
        };
        if holder == pid {
            return None;
        }
        let theirs = self
            .members
            .get(&holder)
            .map(|m| (m.joined.clone(), holder.clone()));
        let ours = (joined, pid.clone());
        let (winner, loser) = match theirs {
            Some(theirs) if theirs <= ours => (holder, pid),
            _ => (pid, holder),
        };
        self.by_name.insert(key, winner);
        let member = self.members.get(&loser)?;
        Some((loser.clone(), member.session?))
    }

    /// Removes a participant announced as left, and frees its name.
    pub fn left(&mut self, participant_id: &str) {
        if let Some(member) = self.members.remove(participant_id) {
            let key = names::skeleton(&member.name);
            if self.by_name.get(&key).map(String::as_str) == Some(participant_id) {
                self.by_name.remove(&key);
            }
        }
    }

    /// Adds a participant from a peer's snapshot, where no "joined" event
    /// comes with it. A name already held keeps its holder.
    pub fn load(&mut self, p: Participant) {
        let home = p.node.unwrap_or_default();
        self.by_name
            .entry(names::skeleton(&p.name))
            .or_insert(p.id.clone());
        self.members.insert(
            p.id,
            Member {
                name: p.name,
                joined: (0, home.id.clone()),
                homed: (0, home.id.clone()),
                home,
                session: None,
                detached: None,
            },
        );
    }

    /// Live participants, sorted by name.
    pub fn participants(&self) -> Vec<Participant> {
        let mut list: Vec<_> = self
            .members
            .iter()
            .map(|(id, m)| Participant {
                id: id.clone(),
                name: m.name.clone(),
                node: Some(m.home.clone()),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        list
    }

    /// The names of live participants by their home node (id and
    /// generation), each list sorted and cut to its first `cap` names,
    /// with how many were left off.
    pub fn names_by_home(
        &self,
        cap: usize,
    ) -> std::collections::HashMap<(String, u64), (Vec<String>, usize)> {
        let mut by_home: std::collections::HashMap<(&str, u64), Vec<&str>> =
            std::collections::HashMap::new();
        for m in self.members.values() {
            by_home
                .entry((m.home.id.as_str(), m.home.generation))
                .or_default()
                .push(&m.name);
        }
        by_home
            .into_iter()
            .map(|((id, generation), mut names)| {
                names.sort_unstable();
                let more = names.len().saturating_sub(cap);
                names.truncate(cap);
                let names = names.into_iter().map(str::to_string).collect();
                ((id.to_string(), generation), (names, more))
            })
            .collect()
    }

    /// Participants whose home node is not in `alive` (node ids), sorted.
    pub fn orphans(&self, alive: &[NodeId]) -> Vec<String> {
        let mut list: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !alive.contains(&m.home))
            .map(|(id, _)| id.clone())
            .collect();
        list.sort();
        list
    }

    /// Detached participants that have been so for `grace` or longer at
    /// `now`, sorted.
    pub fn detached_for(&self, grace: Duration, now: Instant) -> Vec<String> {
        let mut due: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.detached.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId {
            id: id.into(),
            generation: 1,
        }
    }

    #[test]
    fn names_by_home_are_sorted_and_capped_per_node() {
        let mut r = Roster::default();
        for i in 0..250u64 {
            let home = if i % 5 == 0 { node("n2") } else { node("n1") };
            r.joined(&format!("p{i}"), &format!("u{i:03}"), home, i);
        }
        let by_home = r.names_by_home(100);
        let (n1, more1) = &by_home[&("n1".to_string(), 1)];
        assert_eq!((n1.len(), *more1), (100, 100));
        assert_eq!(n1[..2], ["u001", "u002"]);
        let (n2, more2) = &by_home[&("n2".to_string(), 1)];
        assert_eq!((n2.len(), *more2), (50, 0));
        assert!(n2.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_earlier_join_keeps_the_name_in_either_order() {
        // (Lamport time, origin id, participant id): "pa" at 3 on n2 is
        // earlier than "pb" at 3 on n3, whichever is delivered first.
        for first_a in [true, false] {
            let mut r = Roster::default();
            let a = ("pa", node("n2"));
            let b = ("pb", node("n3"));
            let (first, second) = if first_a { (a, b) } else { (b, a) };
            assert_eq!(r.joined(first.0, "Sam", first.1, 3), None);
            r.get_mut(first.0).unwrap().session = Some(1);
            let loser = r.joined(second.0, "Sam", second.1, 3);
            if first_a {
                assert_eq!(loser, None, "pb has no local session to end");
            } else {
                assert_eq!(loser, Some(("pb".to_string(), 1)));
            }
            r.left("pb");
            assert!(r.resembles("Sam").is_some(), "pa still holds it");
            r.left("pa");
            assert!(r.resembles("Sam").is_none());
        }
    }

    #[test]
    fn look_alikes_are_one_name_and_the_earlier_join_keeps_it() {
        // "Sam" on n2 and "\u{405}am" (Cyrillic DZE) on n3 at the same
        // Lamport time: every node keeps n2's, in either delivery order.
        for first_a in [true, false] {
            let mut r = Roster::default();
            let a = ("pa", "Sam", node("n2"));
            let b = ("pb", "\u{405}am", node("n3"));
            let (first, second) = if first_a { (a, b) } else { (b, a) };
            assert_eq!(r.joined(first.0, first.1, first.2, 3), None);
            r.get_mut(first.0).unwrap().session = Some(1);
            let loser = r.joined(second.0, second.1, second.2, 3);
            assert_eq!(loser.is_some(), !first_a, "only a local loser is returned");
            assert!(r.holds_name("pa") && !r.holds_name("pb"));
            assert_eq!(r.resembles("SAM"), Some("Sam"), "shown as typed");
            r.left("pb");
            assert_eq!(r.resembles("sam"), Some("Sam"), "pa still holds it");
            r.left("pa");
            assert_eq!(r.resembles("sam"), None);
        }
    }

    #[test]
    fn of_two_announcements_and_a_move_the_later_names_the_home_in_any_order() {
        // A split ends: n0 announces "P" back at 177 while n1, where it has
        // resumed, stamped its move at 182 and announces it back at 210.
        // Every delivery order leaves it homed on n1, and n1 keeps its
        // session whichever announcement arrives last.
        let moved_to_n1 = || {
            let mut r = Roster::default();
            r.joined("p", "P", node("n0"), 2);
            let member = r.get_mut("p").unwrap();
            member.home = node("n1");
            member.homed = (182, "n1".into());
            member.session = Some(7);
            r
        };
        let announcements = [(node("n0"), 177), (node("n1"), 210)];
        for first in 0..2 {
            let mut r = moved_to_n1();
            for (home, lamport) in [&announcements[first], &announcements[1 - first]] {
                assert_eq!(r.joined("p", "P", home.clone(), *lamport), None);
            }
            let member = r.get("p").unwrap();
            assert_eq!(member.home, node("n1"), "order {first}");
            assert_eq!(member.homed, (210, "n1".to_string()));
            assert!(r.holds_name("p"));
        }
        // Without the later one, the older announcement of n0 does not
        // take the participant from n1 or end its session there.
        let mut r = moved_to_n1();
        r.joined("p", "P", node("n0"), 177);
        assert_eq!(r.get("p").unwrap().home, node("n1"));
        assert_eq!(r.get("p").unwrap().session, Some(7));
    }
}
