//! The invariants a run must keep, checked on what every participant
//! received (the same ones as `tests/failover.rs` and the README's
//! Guarantees):
//! * within one session a node sends each origin's events once and in
//!   order (checked on what it sent, before the client's own dedupe);
//! * nobody receives an event from before its own join;
//! * every acknowledged publish reaches, exactly once, every participant
//!   identity that joined before it was first sent and is still there at the
//!   end, unless every node that held it crashed or stopped (a node cut off
//!   from all others acknowledges what it alone holds);
//! * no participant receives an event or a message twice;
//! * per-sender FIFO: one sender's messages arrive in the order it sent them;
//! * causal order: a message arrives after every message its sender had
//!   received before sending it (but a copy lost with its holders);
//! * one message, one event: the same event id and Lamport time everywhere,
//!   and the acknowledgement names that event;
//! * each departure is announced once to each participant: after a "left",
//!   the next news of that participant is that it is back;
//! * nobody is announced as left who did not leave or vanish, unless it is
//!   announced back afterwards (the other side of a split gave up on it);
//! * the rosters converge: every running node lists exactly the
//!   participants that are still there.

use std::collections::{BTreeMap, BTreeSet};

use crate::proto::EventKind;

use super::{EventKey, Sim};

/// Every invariant; the first violation found, described.
pub fn all(sim: &Sim) -> Result<(), String> {
    sessions_in_order(sim)?;
    nothing_from_before_a_join(sim)?;
    no_duplicates(sim)?;
    one_event_per_message(sim)?;
    acknowledged_reach_everyone(sim)?;
    fifo_per_sender(sim)?;
    causal_order(sim)?;
    departures_announced_once(sim)?;
    nobody_announced_wrongly(sim)?;
    rosters_converge(sim)?;
    Ok(())
}

/// (sender participant id, message number) of every message, by publish id.
fn messages(sim: &Sim) -> BTreeMap<&str, (&str, u64)> {
    let mut out = BTreeMap::new();
    for p in sim.participants() {
        for record in &p.published {
            if let Some(identity) = p.identities.get(record.identity) {
                out.insert(
                    record.publish_id.as_str(),
                    (identity.participant_id.as_str(), record.number),
                );
            }
        }
    }
    out
}

fn sessions_in_order(sim: &Sim) -> Result<(), String> {
    for p in sim.participants() {
        if let Some(fault) = p.session_faults.first() {
            return Err(fault.clone());
        }
    }
    Ok(())
}

fn nothing_from_before_a_join(sim: &Sim) -> Result<(), String> {
    // Each identity's first "joined" event, as anyone received it (one
    // announced as left by the other side of a split is announced back by
    // a later one).
    let mut joins: BTreeMap<&str, (u64, &EventKey)> = BTreeMap::new();
    for p in sim.participants() {
        for o in p.received.iter().filter(|o| o.kind == EventKind::Joined) {
            let first = joins.entry(&o.participant_id).or_insert((o.lamport, &o.id));
            if o.lamport < first.0 {
                *first = (o.lamport, &o.id);
            }
        }
    }
    for p in sim.participants() {
        for (i, identity) in p.identities.iter().enumerate() {
            let Some(&(_, join)) = joins.get(identity.participant_id.as_str()) else {
                continue;
            };
            let early = p.received.iter().find(|o| {
                o.identity == i && o.id.0 == join.0 && o.id.1 == join.1 && o.id.2 < join.2
            });
            if let Some(o) = early {
                return Err(format!(
                    "{} received {:?} ({:?}), from before its own join {join:?}",
                    p.name, o.text, o.id
                ));
            }
        }
    }
    Ok(())
}

fn no_duplicates(sim: &Sim) -> Result<(), String> {
    for p in sim.participants() {
        let mut ids = BTreeSet::new();
        let mut publishes = BTreeSet::new();
        for o in &p.received {
            if !ids.insert((o.identity, &o.id)) {
                return Err(format!("{} received event {:?} twice", p.name, o.id));
            }
            if o.kind == EventKind::Message && !publishes.insert((o.identity, &o.publish_id)) {
                return Err(format!("{} received message {:?} twice", p.name, o.text));
            }
        }
    }
    Ok(())
}

/// One message, one event: every participant that shows a message shows
/// it with the same event id and Lamport time, which its acknowledgement
/// names. Except a copy lost with every node that held it (a node cut off
/// from all others shows its own events to its participants at once; if it
/// crashes before the split heals, its copy is gone and the sender's retry
/// is stamped anew): the README's known limit.
fn one_event_per_message(sim: &Sim) -> Result<(), String> {
    let mut seen: BTreeMap<&str, (&EventKey, u64, &str)> = BTreeMap::new();
    for p in sim.participants() {
        for o in p.received.iter().filter(|o| o.kind == EventKind::Message) {
            if lost_with_its_holders(sim, &o.id) {
                continue;
            }
            match seen.get(o.publish_id.as_str()) {
                Some(&(id, lamport, who)) if (id, lamport) != (&o.id, o.lamport) => {
                    return Err(format!(
                        "message {:?} is event {id:?} at Lamport {lamport} for {who} but {:?} at {} for {}",
                        o.text, o.id, o.lamport, p.name
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(&o.publish_id, (&o.id, o.lamport, &p.name));
                }
            }
        }
    }
    for p in sim.participants() {
        for record in &p.published {
            let Some((id, lamport)) = &record.acked else {
                continue;
            };
            if lost_with_its_holders(sim, id) {
                continue;
            }
            if let Some(&(shown, shown_lamport, who)) = seen.get(record.publish_id.as_str())
                && (shown, shown_lamport) != (id, *lamport)
            {
                return Err(format!(
                    "{}'s message {:?} was acknowledged as {id:?} at Lamport {lamport} but {who} got {shown:?} at {shown_lamport}",
                    p.name, record.text
                ));
            }
        }
    }
    Ok(())
}

fn acknowledged_reach_everyone(sim: &Sim) -> Result<(), String> {
    for sender in sim.participants() {
        for record in sender.published.iter().filter(|r| r.acked.is_some()) {
            let Some((sent, _)) = record.first_sent else {
                continue;
            };
            if record
                .acked
                .as_ref()
                .is_some_and(|(id, _)| lost_with_its_holders(sim, id))
            {
                // Acknowledged while its node reached no other (a split),
                // and that node crashed before the split healed: what the
                // README says an acknowledgement promises then.
                continue;
            }
            for q in sim.participants() {
                let Some(identity) = q.identities.last() else {
                    continue;
                };
                let current = q.identities.len() - 1;
                if identity.ended.is_some() || identity.joined_at >= sent || !q.is_active() {
                    continue;
                }
                let copies = q
                    .received
                    .iter()
                    .filter(|o| o.identity == current && o.publish_id == record.publish_id)
                    .count();
                if copies != 1 {
                    return Err(format!(
                        "{} received {}'s acknowledged message {:?} {copies} times",
                        q.name, sender.name, record.text
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether no running node holds event `id` (in its history, which the
/// simulator never fills) and its origin no longer runs (it crashed, or
/// stopped while out of reach of the others): it was lost with every node
/// that held it.
fn lost_with_its_holders(sim: &Sim, id: &EventKey) -> bool {
    let origin = crate::proto::NodeId {
        id: id.0.clone(),
        generation: id.1,
    };
    let held = (0..sim.node_count())
        .filter_map(|i| sim.core(i))
        .any(|core| core.chat().holds(&origin, id.2));
    let origin_runs = (0..sim.node_count())
        .filter_map(|i| sim.core(i))
        .any(|core| *core.id() == origin);
    !held && !origin_runs
}

fn fifo_per_sender(sim: &Sim) -> Result<(), String> {
    let messages = messages(sim);
    for q in sim.participants() {
        let mut last: BTreeMap<(usize, &str), u64> = BTreeMap::new();
        for o in q.received.iter().filter(|o| o.kind == EventKind::Message) {
            let Some(&(_, number)) = messages.get(o.publish_id.as_str()) else {
                continue;
            };
            // The identity it was stamped for: a message retried after its
            // sender had to join again as new is the new identity's.
            let sender = o.participant_id.as_str();
            if let Some(&before) = last.get(&(o.identity, sender))
                && before >= number
            {
                return Err(format!(
                    "{} received {:?} after message #{before} of the same sender",
                    q.name, o.text
                ));
            }
            last.insert((o.identity, sender), number);
        }
    }
    Ok(())
}

fn causal_order(sim: &Sim) -> Result<(), String> {
    // What each message's sender had received (messages only) before first
    // sending it. Not a copy lost with every node that held it: the
    // message may come again, retried by its sender and stamped anew, but
    // what the sender saw is gone (the README's known limit).
    let mut past: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in sim.participants() {
        for record in &p.published {
            let Some((_, count)) = record.first_sent else {
                continue;
            };
            let before: Vec<&str> = p
                .received
                .iter()
                .filter(|o| o.identity == record.identity)
                .take(count)
                .filter(|o| o.kind == EventKind::Message && !lost_with_its_holders(sim, &o.id))
                .map(|o| o.publish_id.as_str())
                .collect();
            past.insert(&record.publish_id, before);
        }
    }
    for q in sim.participants() {
        let mut position: BTreeMap<(usize, &str), usize> = BTreeMap::new();
        for (i, o) in q.received.iter().enumerate() {
            if o.kind == EventKind::Message {
                position.insert((o.identity, o.publish_id.as_str()), i);
            }
        }
        for (&(identity, m2), &at) in &position {
            let Some(before) = past.get(m2) else { continue };
            for m1 in before {
                if let Some(&earlier) = position.get(&(identity, m1))
                    && earlier > at
                {
                    return Err(format!(
                        "{} received {:?} before {:?}, which its sender had seen first",
                        q.name, q.received[at].text, q.received[earlier].text
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Each participant is told of a departure once: after a "left", the next
/// news of that participant is that it is back ("joined"), never another
/// "left". (Both sides of a split may announce one departure, as two
/// events; each observer is shown the first that reaches it.)
fn departures_announced_once(sim: &Sim) -> Result<(), String> {
    for q in sim.participants() {
        let mut gone: BTreeSet<(usize, &str)> = BTreeSet::new();
        for (k, o) in q.received.iter().enumerate() {
            // Told it is here after all: a new departure may be told.
            for (_, identity, back) in q.still_here.iter().filter(|s| s.0 == k) {
                for pid in back {
                    gone.remove(&(*identity, pid.as_str()));
                }
            }
            let key = (o.identity, o.participant_id.as_str());
            match o.kind {
                EventKind::Left if !gone.insert(key) => {
                    return Err(format!(
                        "{} was told {} left twice ({:?} at {:.3}s)",
                        q.name,
                        o.participant_name,
                        o.id,
                        o.at.as_secs_f64()
                    ));
                }
                EventKind::Joined => {
                    gone.remove(&key);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn nobody_announced_wrongly(sim: &Sim) -> Result<(), String> {
    let mut ended: BTreeMap<&str, Option<&'static str>> = BTreeMap::new();
    for p in sim.participants() {
        for identity in &p.identities {
            ended.insert(&identity.participant_id, identity.ended.map(|(_, why)| why));
        }
    }
    for q in sim.participants() {
        for (k, o) in q.received.iter().enumerate() {
            if o.kind != EventKind::Left {
                continue;
            }
            // Announced as left by the other side of a split, and back (or
            // said to be here, once that "left" was lost with its node).
            let back = q.received[k + 1..].iter().any(|later| {
                later.kind == EventKind::Joined
                    && later.participant_id == o.participant_id
                    && later.identity == o.identity
            }) || q.still_here.iter().any(|(at, identity, back)| {
                *at > k && *identity == o.identity && back.contains(&o.participant_id)
            });
            // An observer gone before the heal could not be told it is back.
            let observer_gone = q
                .identities
                .get(o.identity)
                .is_none_or(|i| i.ended.is_some());
            if back || observer_gone {
                continue;
            }
            match ended.get(o.participant_id.as_str()) {
                // Its session was lost and announced as left (on the other
                // side of a split, say) before it could resume: it joined
                // again as new, which its observers are told.
                Some(Some("left" | "vanished" | "lost a name clash" | "joined again as new")) => {}
                Some(why) => {
                    return Err(format!(
                        "{} was announced as left to {} at {:.3}s but had not left ({why:?})",
                        o.participant_name,
                        q.name,
                        o.at.as_secs_f64()
                    ));
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn rosters_converge(sim: &Sim) -> Result<(), String> {
    let expected: BTreeSet<(String, String)> = sim
        .participants()
        .iter()
        .filter(|p| p.is_active())
        .filter_map(|p| {
            let identity = p.identities.last()?;
            identity
                .ended
                .is_none()
                .then(|| (identity.participant_id.clone(), p.name.clone()))
        })
        .collect();
    for i in 0..sim.node_count() {
        let Some(core) = sim.core(i) else { continue };
        let listed: BTreeSet<(String, String)> = core
            .participants()
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        if listed != expected {
            return Err(format!(
                "node n{i} lists {:?}, but the participants still there are {:?}",
                listed.iter().map(|p| &p.1).collect::<Vec<_>>(),
                expected.iter().map(|p| &p.1).collect::<Vec<_>>()
            ));
        }
    }
    for p in sim.participants().iter().filter(|p| p.is_active()) {
        if !p.is_connected() {
            return Err(format!("{} is not connected at the end", p.name));
        }
    }
    Ok(())
}
