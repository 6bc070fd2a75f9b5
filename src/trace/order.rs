//! From records to arrows: each send matched to its receive, the arrows
//! ordered by happens-before (each process's own order, send before
//! receive) with Lamport time to choose among what is concurrent, then the
//! filters and the collapsed fan-out.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};

use super::parse::{Dir, Kind, LogFile, Record, Role};
use super::{Diagram, Item, Lifeline, Options};

/// A lifeline before it has a place: a node, a participant (by id), or the
/// stand-ins for a side whose log is missing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    UnknownSender,
    Node(String),
    Participant(String),
    UnknownReceiver,
}

/// One end of an arrow as its process logged it: where in that process's
/// log, and the Lamport clock there.
/// (file, line, sub): where a point is in its process's log.
type Pos = (usize, usize, usize);

#[derive(Debug, Clone)]
struct Point {
    key: Key,
    /// (file, line, 0), or (file, line, 1) for a send placed just after
    /// the record it follows (a delivery the node did not log).
    pos: Pos,
    clock: Option<u64>,
}

#[derive(Debug, Clone)]
struct Arrow {
    from: Key,
    to: Key,
    call: String,
    detail: Option<String>,
    send_l: Option<u64>,
    recv_l: Option<u64>,
    dashed: bool,
    event: Option<String>,
    /// The participant the call or event is about.
    author: Option<String>,
    send: Option<Point>,
    recv: Option<Point>,
    times: Vec<i128>,
}

/// What the records say about one event.
#[derive(Debug, Clone, Default)]
struct EventInfo {
    author: Option<String>,
    kind: Option<String>,
}

fn is_client_call(call: &str) -> bool {
    matches!(call, "Join" | "Publish" | "PublishStream" | "Leave")
}

/// A participant's request is matched by the call it logged, PublishStream
/// being Publish on the participant's side.
fn call_class(call: &str) -> &str {
    match call {
        "PublishStream" => "Publish",
        other => other,
    }
}

/// Disjoint sets of strings: iterative `find` with path compression and
/// union by size, so a long chain neither recurses deeply nor stays long.
#[derive(Default)]
struct UnionFind {
    parent: HashMap<String, String>,
    size: HashMap<String, usize>,
}

impl UnionFind {
    fn find(&mut self, x: &str) -> String {
        let mut root = x.to_string();
        while let Some(parent) = self.parent.get(&root) {
            if *parent == root {
                break;
            }
            root = parent.clone();
        }
        if !self.parent.contains_key(x) {
            self.parent.insert(x.to_string(), x.to_string());
        }
        // Path compression: every node on the way now points at the root.
        let mut at = x.to_string();
        while at != root {
            let next = self
                .parent
                .insert(at, root.clone())
                .expect("on the path to the root");
            at = next;
        }
        root
    }

    fn union(&mut self, a: &str, b: &str) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        let size_a = self.size.get(&ra).copied().unwrap_or(1);
        let size_b = self.size.get(&rb).copied().unwrap_or(1);
        let (small, large) = if size_a < size_b { (ra, rb) } else { (rb, ra) };
        self.size.insert(large.clone(), size_a + size_b);
        self.size.remove(&small);
        self.parent.insert(small, large);
    }
}

/// The process that logged `r`: a node by its id, a participant by its id
/// (or, never welcomed, by its name and file).
fn logger(r: &Record) -> Key {
    match r.role {
        Role::Node => Key::Node(r.node.clone().unwrap_or_default()),
        Role::Participant => Key::Participant(r.participant_id.clone().unwrap_or_else(|| {
            format!("{}\u{0}{}", r.participant.as_deref().unwrap_or(""), r.file)
        })),
    }
}

fn describe(key: &Key, names: &HashMap<String, String>) -> String {
    match key {
        Key::Node(id) => format!("node {id}"),
        Key::Participant(id) => format!(
            "participant {}",
            super::parse::quoted(names.get(id).map_or(id.as_str(), String::as_str))
        ),
        Key::UnknownSender | Key::UnknownReceiver => "unknown".into(),
    }
}

/// Draws the diagram of `files` (read in any order).
pub fn build(
    files: &[LogFile],
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Diagram, String> {
    // Participants' records: those logged before the first Welcome have no
    // id yet; they are the participant the next id names.
    let mut recs: Vec<Record> = Vec::new();
    let mut seen_process: HashMap<Key, usize> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        let mut rs = file.records.clone();
        let mut next_id: Option<String> = None;
        for r in rs.iter_mut().rev() {
            if r.role != Role::Participant {
                continue;
            }
            match &r.participant_id {
                Some(id) => next_id = Some(id.clone()),
                None => r.participant_id = next_id.clone(),
            }
        }
        // The same process twice (one file given twice, or a copy of it).
        let Some(first) = rs.first() else { continue };
        let me = logger(first);
        if let Some(&earlier) = seen_process.get(&me) {
            let names = HashMap::new();
            warnings.push(format!(
                "{}: the log of the same {} as {}; ignored",
                file.name,
                describe(&me, &names),
                files[earlier].name
            ));
            continue;
        }
        seen_process.insert(me, i);
        recs.extend(rs);
    }

    check_one_run(files, &recs)?;

    // What the records tell about nodes, participants and events.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut node_addr: HashMap<String, String> = HashMap::new();
    let mut addr_node: HashMap<String, String> = HashMap::new();
    let mut booted: HashMap<String, bool> = HashMap::new();
    let mut logged: HashSet<Key> = HashSet::new();
    let mut events: HashMap<String, EventInfo> = HashMap::new();
    for r in &recs {
        logged.insert(logger(r));
        if let (Some(name), Some(id)) = (&r.participant, &r.participant_id) {
            names.entry(id.clone()).or_insert_with(|| name.clone());
        }
        if r.role == Role::Node {
            let node = r.node.clone().unwrap_or_default();
            if let Some(addr) = &r.node_addr {
                node_addr
                    .entry(node.clone())
                    .or_insert_with(|| addr.clone());
                addr_node
                    .entry(addr.clone())
                    .or_insert_with(|| node.clone());
            }
            if r.kind == Kind::Start {
                booted.insert(node.clone(), r.boot.is_some());
            }
            if let Some(e) = &r.event {
                let info = events.entry(e.clone()).or_default();
                if info.author.is_none() {
                    info.author = r.participant.clone();
                }
                if info.kind.is_none() {
                    info.kind = r.event_kind.clone();
                }
            }
        }
        if let (Some(e), Some(kind)) = (&r.event, &r.event_kind) {
            events
                .entry(e.clone())
                .or_default()
                .kind
                .get_or_insert(kind.clone());
        }
    }

    // Each process's clock at each of its records: the clock after the
    // rule where the record has it, else the highest time seen so far.
    let mut clocks: Vec<u64> = Vec::with_capacity(recs.len());
    let mut running: HashMap<Key, u64> = HashMap::new();
    for r in &recs {
        let clock = running.entry(logger(r)).or_insert(0);
        if let Some(l) = r.event_lamport {
            *clock = (*clock).max(l);
        }
        if let Some(l) = r.lamport_after {
            *clock = (*clock).max(l);
        }
        clocks.push(r.lamport_after.unwrap_or(*clock));
    }
    let point = |i: usize, sub: usize| Point {
        key: logger(&recs[i]),
        pos: (recs[i].file, recs[i].line, sub),
        clock: Some(clocks[i]),
    };
    // Where each node got each event: its stamp, or the relay that brought it.
    let mut got_event: HashMap<(String, String), usize> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        let got = r.kind == Kind::Stamp
            || (r.kind == Kind::Rpc
                && r.dir == Some(Dir::Received)
                && r.call.as_deref() != Some("Deliver"));
        if let (Role::Node, true, Some(node), Some(e)) = (r.role, got, &r.node, &r.event) {
            got_event.entry((node.clone(), e.clone())).or_insert(i);
        }
    }
    let node_by_addr = |addr: Option<&String>| -> Option<Key> {
        addr.and_then(|a| addr_node.get(a))
            .map(|n| Key::Node(n.clone()))
    };
    let sender_if_logged = |key: Key| -> Key {
        if logged.contains(&key) {
            key
        } else {
            Key::UnknownSender
        }
    };
    let event_detail = |e: Option<&String>, kind: Option<&String>| -> Option<String> {
        let info = e.and_then(|e| events.get(e));
        let author = info.and_then(|i| i.author.clone());
        let kind = kind.cloned().or_else(|| info.and_then(|i| i.kind.clone()));
        match (author, kind) {
            (Some(a), Some(k)) => Some(format!("{a} {k}")),
            (None, Some(k)) => Some(k),
            (Some(a), None) => Some(a),
            (None, None) => None,
        }
    };
    let author_of = |e: Option<&String>| events.get(e?)?.author.clone();
    let times = |is: &[usize]| is.iter().filter_map(|&i| recs[i].time).collect::<Vec<_>>();

    let is = |r: &Record, kind: Kind, call: &str, dir: Dir| {
        r.kind == kind && r.call.as_deref() == Some(call) && r.dir == Some(dir)
    };

    let mut arrows: Vec<Arrow> = Vec::new();

    // Join, Publish, PublishStream, Leave: a participant's request.
    let mut requests: HashMap<(String, String, u64), VecDeque<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        if r.role == Role::Participant
            && r.kind == Kind::Rpc
            && r.dir == Some(Dir::Sent)
            && r.call.as_deref().is_some_and(is_client_call)
        {
            let key = (
                call_class(r.call.as_deref().unwrap_or("")).to_string(),
                r.participant.clone().unwrap_or_default(),
                r.lamport_carried.or(r.lamport_after).unwrap_or(0),
            );
            requests.entry(key).or_default().push_back(i);
        }
    }
    for (i, r) in recs.iter().enumerate() {
        if !(r.role == Role::Node
            && r.kind == Kind::Rpc
            && r.dir == Some(Dir::Received)
            && r.call.as_deref().is_some_and(is_client_call))
        {
            continue;
        }
        let call = r.call.clone().unwrap_or_default();
        let key = (
            call_class(&call).to_string(),
            r.participant.clone().unwrap_or_default(),
            r.lamport_carried.unwrap_or(0),
        );
        let sent = requests.get_mut(&key).and_then(VecDeque::pop_front);
        let (from, send) = match sent {
            Some(s) => (logger(&recs[s]), Some(point(s, 0))),
            None => (
                sender_if_logged(Key::Participant(
                    r.participant_id.clone().unwrap_or_default(),
                )),
                None,
            ),
        };
        let detail = (from == Key::UnknownSender)
            .then(|| format!("from {}", r.participant.as_deref().unwrap_or("?")));
        arrows.push(Arrow {
            from,
            to: logger(r),
            call,
            detail,
            send_l: sent
                .and_then(|s| recs[s].lamport_after)
                .or(r.lamport_carried),
            recv_l: r.lamport_after,
            dashed: false,
            event: r.event.clone(),
            author: r.participant.clone(),
            send,
            recv: Some(point(i, 0)),
            times: times(&[Some(i), sent].into_iter().flatten().collect::<Vec<_>>()),
        });
    }
    let mut unanswered: Vec<usize> = requests.into_values().flatten().collect();
    unanswered.sort_unstable();
    for s in unanswered {
        let r = &recs[s];
        let to = r
            .node
            .clone()
            .map(Key::Node)
            .or_else(|| node_by_addr(r.node_addr.as_ref()))
            .unwrap_or(Key::UnknownReceiver);
        arrows.push(Arrow {
            from: logger(r),
            to,
            call: r.call.clone().unwrap_or_default(),
            detail: None,
            send_l: r.lamport_after.or(r.lamport_carried),
            recv_l: None,
            dashed: false,
            event: None,
            author: r.participant.clone(),
            send: Some(point(s, 0)),
            recv: None,
            times: times(&[s]),
        });
    }

    // ServerJoin and its reply.
    let mut joins: HashMap<(String, String), VecDeque<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        if is(r, Kind::Rpc, "ServerJoin", Dir::Sent) {
            let key = (
                r.node.clone().unwrap_or_default(),
                r.peer_addr.clone().unwrap_or_default(),
            );
            joins.entry(key).or_default().push_back(i);
        }
    }
    for (i, r) in recs.iter().enumerate() {
        if is(r, Kind::Rpc, "ServerJoin", Dir::Received) {
            let joiner = r.peer.clone().unwrap_or_default();
            let key = (joiner.clone(), r.node_addr.clone().unwrap_or_default());
            let sent = joins.get_mut(&key).and_then(VecDeque::pop_front);
            let from = match sent {
                Some(_) => Key::Node(joiner),
                None => sender_if_logged(Key::Node(joiner)),
            };
            let detail = (from == Key::UnknownSender)
                .then(|| format!("from {}", r.peer_addr.as_deref().unwrap_or("?")));
            arrows.push(Arrow {
                from,
                to: logger(r),
                call: "ServerJoin".into(),
                detail,
                send_l: sent.and_then(|s| recs[s].lamport_after),
                recv_l: r.lamport_after,
                dashed: false,
                event: None,
                author: None,
                send: sent.map(|s| point(s, 0)),
                recv: Some(point(i, 0)),
                times: times(&[Some(i), sent].into_iter().flatten().collect::<Vec<_>>()),
            });
        } else if is(r, Kind::Rpc, "ServerJoinReply", Dir::Received) {
            // The boot member logs no reply: it is drawn from the address.
            let from = node_by_addr(r.peer_addr.as_ref())
                .map(sender_if_logged)
                .unwrap_or(Key::UnknownSender);
            let detail = (from == Key::UnknownSender)
                .then(|| format!("from {}", r.peer_addr.as_deref().unwrap_or("?")));
            arrows.push(Arrow {
                from,
                to: logger(r),
                call: "ServerJoinReply".into(),
                detail,
                send_l: r.lamport_carried,
                recv_l: r.lamport_after,
                dashed: true,
                event: None,
                author: None,
                send: None,
                recv: Some(point(i, 0)),
                times: times(&[i]),
            });
        }
    }
    let mut unanswered: Vec<usize> = joins.into_values().flatten().collect();
    unanswered.sort_unstable();
    for s in unanswered {
        let r = &recs[s];
        arrows.push(Arrow {
            from: logger(r),
            to: node_by_addr(r.peer_addr.as_ref()).unwrap_or(Key::UnknownReceiver),
            call: "ServerJoin".into(),
            detail: None,
            send_l: r.lamport_after,
            recv_l: None,
            dashed: false,
            event: None,
            author: None,
            send: Some(point(s, 0)),
            recv: None,
            times: times(&[s]),
        });
    }

    // Relays: one arrow per event from the node that sent it to the one
    // that received it. A re-sent copy (after a reconnection) is left out.
    let mut relays: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        if is(r, Kind::Rpc, "RelayBatch", Dir::Sent) {
            let key = (
                r.event.clone().unwrap_or_default(),
                r.peer.clone().unwrap_or_default(),
            );
            relays.entry(key).or_default().push(i);
        }
    }
    let mut used: HashSet<usize> = HashSet::new();
    let mut arrived: HashSet<(String, String)> = HashSet::new();
    for (i, r) in recs.iter().enumerate() {
        if !is(r, Kind::Rpc, "RelayBatch", Dir::Received) {
            continue;
        }
        let me = r.node.clone().unwrap_or_default();
        let key = (r.event.clone().unwrap_or_default(), me);
        let candidates = relays.get(&key).map(Vec::as_slice).unwrap_or_default();
        let sent = candidates
            .iter()
            .copied()
            .find(|s| !used.contains(s) && recs[*s].node == r.peer)
            .or_else(|| candidates.iter().copied().find(|s| !used.contains(s)));
        arrived.insert(key);
        if let Some(s) = sent {
            used.insert(s);
        }
        let from = match sent {
            Some(s) => logger(&recs[s]),
            None => sender_if_logged(Key::Node(r.peer.clone().unwrap_or_default())),
        };
        arrows.push(Arrow {
            from,
            to: logger(r),
            call: "RelayBatch".into(),
            detail: event_detail(r.event.as_ref(), r.event_kind.as_ref()),
            send_l: r.event_lamport,
            recv_l: r.lamport_after,
            dashed: false,
            event: r.event.clone(),
            author: r
                .participant
                .clone()
                .or_else(|| author_of(r.event.as_ref())),
            send: sent.map(|s| point(s, 0)),
            recv: Some(point(i, 0)),
            times: times(&[Some(i), sent].into_iter().flatten().collect::<Vec<_>>()),
        });
    }
    let mut unanswered: Vec<usize> = relays
        .into_iter()
        .filter(|(key, _)| !arrived.contains(key))
        .flat_map(|(_, v)| v.into_iter().take(1))
        .collect();
    unanswered.sort_unstable();
    for s in unanswered {
        let r = &recs[s];
        arrows.push(Arrow {
            from: logger(r),
            to: r
                .peer
                .clone()
                .map(Key::Node)
                .unwrap_or(Key::UnknownReceiver),
            call: "RelayBatch".into(),
            detail: event_detail(r.event.as_ref(), r.event_kind.as_ref()),
            send_l: r.event_lamport,
            recv_l: None,
            dashed: false,
            event: r.event.clone(),
            author: r.participant.clone(),
            send: Some(point(s, 0)),
            recv: None,
            times: times(&[s]),
        });
    }

    // Deliveries on the participants' Join streams.
    let mut delivered: HashMap<(String, String), VecDeque<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        if r.role == Role::Node && is(r, Kind::Event, "Deliver", Dir::Sent) {
            let key = (
                r.event.clone().unwrap_or_default(),
                r.participant_id.clone().unwrap_or_default(),
            );
            delivered.entry(key).or_default().push_back(i);
        }
    }
    for (i, r) in recs.iter().enumerate() {
        if !(r.role == Role::Participant && is(r, Kind::Event, "Deliver", Dir::Received)) {
            continue;
        }
        let key = (
            r.event.clone().unwrap_or_default(),
            r.participant_id.clone().unwrap_or_default(),
        );
        let sent = delivered.get_mut(&key).and_then(VecDeque::pop_front);
        let (from, send) = match sent {
            Some(s) => (logger(&recs[s]), Some(point(s, 0))),
            None => {
                // The node logged deliveries at DEBUG only, or not at all
                // (events replayed after a failover): the send is placed
                // right after the node got the event.
                let node = r.node.clone().unwrap_or_default();
                let from = sender_if_logged(Key::Node(node.clone()));
                let send = match (&from, r.event.as_ref()) {
                    (Key::Node(_), Some(e)) => {
                        got_event.get(&(node, e.clone())).map(|&g| point(g, 1))
                    }
                    _ => None,
                };
                (from, send)
            }
        };
        arrows.push(Arrow {
            from,
            to: logger(r),
            call: "Deliver".into(),
            detail: event_detail(r.event.as_ref(), r.event_kind.as_ref()),
            send_l: r.event_lamport,
            recv_l: r.lamport_after,
            dashed: true,
            event: r.event.clone(),
            author: author_of(r.event.as_ref()),
            send,
            recv: Some(point(i, 0)),
            times: times(&[Some(i), sent].into_iter().flatten().collect::<Vec<_>>()),
        });
    }
    let mut unanswered: Vec<usize> = delivered.into_values().flatten().collect();
    unanswered.sort_unstable();
    for s in unanswered {
        let r = &recs[s];
        arrows.push(Arrow {
            from: logger(r),
            to: Key::Participant(r.participant_id.clone().unwrap_or_default()),
            call: "Deliver".into(),
            detail: event_detail(r.event.as_ref(), r.event_kind.as_ref()),
            send_l: r.event_lamport,
            recv_l: None,
            dashed: true,
            event: r.event.clone(),
            author: author_of(r.event.as_ref()),
            send: Some(point(s, 0)),
            recv: None,
            times: times(&[s]),
        });
    }

    let order = happens_before_order(&arrows);
    let arrows: Vec<Arrow> = order.into_iter().map(|i| arrows[i].clone()).collect();
    finish(arrows, &names, &node_addr, &booted, opts, warnings)
}

/// Fails when the files are logs of more than one run: nodes that share no
/// ServerJoin, relay or participant.
fn check_one_run(files: &[LogFile], recs: &[Record]) -> Result<(), String> {
    let mut runs = UnionFind::default();
    let mut anchor: BTreeMap<usize, (String, usize)> = BTreeMap::new();
    for r in recs {
        let Some(node) = &r.node else { continue };
        runs.find(node);
        if r.role == Role::Node
            && let Some(peer) = &r.peer
        {
            runs.union(node, peer);
        }
        anchor.entry(r.file).or_insert((node.clone(), r.line));
    }
    let mut by_run: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (file, (node, line)) in &anchor {
        by_run
            .entry(runs.find(node))
            .or_default()
            .push((*file, *line));
    }
    if by_run.len() <= 1 {
        return Ok(());
    }
    let mut groups: Vec<Vec<(usize, usize)>> = by_run.into_values().collect();
    groups.sort();
    let described: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(n, group)| {
            let files: Vec<String> = group
                .iter()
                .map(|(f, line)| format!("{}:{line}", files[*f].name))
                .collect();
            format!("run {}: {}", n + 1, files.join(", "))
        })
        .collect();
    Err(format!(
        "these logs are of {} different runs, which share no node (a run is the nodes tied by start.boot, ServerJoin and relays, docs/logs.md): {}; trace the logs of one run at a time",
        groups.len(),
        described.join("; ")
    ))
}

/// The arrows in an order where whatever one process did before another
/// thing comes first (its log's order, which is its own order and not wall
/// clock across processes), and among what is free to go next, the lowest
/// Lamport time. Crossing messages (a cycle when every arrow is one row)
/// are broken at the lowest Lamport time.
fn happens_before_order(arrows: &[Arrow]) -> Vec<usize> {
    let n = arrows.len();
    let mut at: HashMap<&Key, Vec<(Pos, usize)>> = HashMap::new();
    for (i, a) in arrows.iter().enumerate() {
        for p in [&a.send, &a.recv].into_iter().flatten() {
            if !matches!(p.key, Key::UnknownSender | Key::UnknownReceiver) {
                at.entry(&p.key).or_default().push((p.pos, i));
            }
        }
    }
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for points in at.values_mut() {
        points.sort_unstable();
        for pair in points.windows(2) {
            let (a, b) = (pair[0].1, pair[1].1);
            if a != b {
                next[a].push(b);
                indegree[b] += 1;
            }
        }
    }
    let priority: Vec<_> = arrows.iter().map(priority_of).collect();
    let mut ready: BinaryHeap<Reverse<(&Prio, usize)>> = BinaryHeap::new();
    let mut waiting: std::collections::BTreeSet<(&Prio, usize)> = Default::default();
    for i in 0..n {
        if indegree[i] == 0 {
            ready.push(Reverse((&priority[i], i)));
        } else {
            waiting.insert((&priority[i], i));
        }
    }
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let i = match ready.pop() {
            Some(Reverse((_, i))) => i,
            // A cycle: the lowest waiting arrow goes first.
            None => match waiting.pop_first() {
                Some((_, i)) => i,
                None => break,
            },
        };
        if done[i] {
            continue;
        }
        done[i] = true;
        waiting.remove(&(&priority[i], i));
        order.push(i);
        for &j in &next[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 && !done[j] {
                waiting.remove(&(&priority[j], j));
                ready.push(Reverse((&priority[j], j)));
            }
        }
    }
    order
}

/// Sorts arrows among those free to go: by the Lamport time at the
/// receiver (the clock after the rule; the sender's time + 1 when the
/// receive is not logged), then at the sender, then what identifies them,
/// so that the result depends on the logs only, not on the order they were
/// given in.
type Prio = (u64, u64, Key, usize, Key, usize, String);

fn priority_of(a: &Arrow) -> Prio {
    let send = a.send.as_ref().and_then(|p| p.clock).or(a.send_l);
    let recv = a.recv.as_ref().and_then(|p| p.clock).or(a.recv_l);
    (
        recv.or(send.map(|s| s.saturating_add(1)))
            .unwrap_or(u64::MAX),
        send.unwrap_or(u64::MAX),
        a.from.clone(),
        a.send.as_ref().map_or(0, |p| p.pos.1),
        a.to.clone(),
        a.recv.as_ref().map_or(0, |p| p.pos.1),
        a.call.clone(),
    )
}

/// The longest name or address shown, in characters.
const MAX_LABEL_CHARS: usize = 40;

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL_CHARS {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX_LABEL_CHARS - 1).collect();
        out.push('…');
        out
    }
}

fn lamport(l: Option<u64>) -> String {
    l.map_or("?".into(), |l| l.to_string())
}

/// Filters, fan-out collapse, lifelines and labels.
fn finish(
    arrows: Vec<Arrow>,
    names: &HashMap<String, String>,
    node_addr: &HashMap<String, String>,
    booted: &HashMap<String, bool>,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Diagram, String> {
    let name_of = |key: &Key| -> Option<&str> {
        match key {
            Key::Participant(id) => names.get(id).map(String::as_str),
            _ => None,
        }
    };
    for wanted in &opts.participants {
        if !names.values().any(|n| n == wanted) {
            let mut known: Vec<&str> = names.values().map(String::as_str).collect();
            known.sort_unstable();
            known.dedup();
            let known: Vec<String> = known.iter().map(|n| super::parse::quoted(n)).collect();
            return Err(format!(
                "no participant named {} in these logs (participants: {})",
                super::parse::quoted(wanted),
                known.join(", ")
            ));
        }
    }
    if arrows.is_empty() {
        warnings.push("the logs hold no call or delivery to draw".into());
    }

    // Nodes are numbered over the whole run: the one that began it first,
    // then in the order they appear.
    let mut nodes: Vec<&str> = Vec::new();
    for a in &arrows {
        for k in [&a.from, &a.to] {
            if let Key::Node(id) = k
                && !nodes.contains(&id.as_str())
            {
                nodes.push(id);
            }
        }
    }
    for id in booted.keys() {
        if !nodes.contains(&id.as_str()) {
            nodes.push(id);
        }
    }
    nodes.sort_by_key(|id| booted.get(*id).copied().unwrap_or(true));
    let node_number: HashMap<&str, usize> =
        nodes.iter().enumerate().map(|(i, id)| (*id, i)).collect();

    // Filters: who, then Lamport time, then wall time.
    let mut left_out = [0usize; 3];
    let mut kept: Vec<&Arrow> = Vec::new();
    for a in &arrows {
        let involves = opts.participants.is_empty()
            || opts.participants.iter().any(|p| {
                name_of(&a.from) == Some(p.as_str())
                    || name_of(&a.to) == Some(p.as_str())
                    || a.author.as_deref() == Some(p.as_str())
            });
        let l = a.send_l.or(a.recv_l);
        let in_lamport = (opts.from_lamport.is_none() && opts.to_lamport.is_none())
            || l.is_some_and(|l| {
                opts.from_lamport.is_none_or(|f| l >= f) && opts.to_lamport.is_none_or(|t| l <= t)
            });
        let in_time = (opts.since.is_none() && opts.until.is_none())
            || a.times
                .iter()
                .any(|&t| opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t <= u));
        match (involves, in_lamport, in_time) {
            (false, _, _) => left_out[0] += 1,
            (_, false, _) => left_out[1] += 1,
            (_, _, false) => left_out[2] += 1,
            _ => kept.push(a),
        }
    }

    // Fan-out: the deliveries of one event, as one item over the nodes
    // that delivered it.
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in kept.iter().enumerate() {
        if a.call == "Deliver"
            && let Some(e) = &a.event
        {
            groups.entry(e.as_str()).or_default().push(i);
        }
    }
    let mut collapsed_at: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut collapsed: HashSet<usize> = HashSet::new();
    for members in groups.into_values() {
        let collapse = if opts.collapse {
            members.len() >= 2
        } else {
            members.len() > opts.collapse_above
        };
        if collapse {
            collapsed.extend(members.iter().copied());
            collapsed_at.insert(members[0], members);
        }
    }

    // Lifelines: the ones something drawn touches.
    enum Draw<'a> {
        Arrow(&'a Arrow),
        Broadcast(Vec<&'a Key>, String),
    }
    let mut draws: Vec<Draw> = Vec::new();
    for (i, a) in kept.iter().enumerate() {
        if let Some(members) = collapsed_at.get(&i) {
            let times: Vec<u64> = members.iter().filter_map(|&m| kept[m].recv_l).collect();
            let range = match (times.iter().min(), times.iter().max()) {
                (Some(lo), Some(hi)) if lo == hi => format!(" (received at L={lo})"),
                (Some(lo), Some(hi)) => format!(" (received at L={lo}..{hi})"),
                _ => String::new(),
            };
            let what = a.detail.as_deref().map(shorten).unwrap_or_default();
            let mut senders: Vec<&Key> = Vec::new();
            for &m in members {
                if !senders.contains(&&kept[m].from) {
                    senders.push(&kept[m].from);
                }
            }
            draws.push(Draw::Broadcast(
                senders,
                format!(
                    "Broadcast {what} L={} to {} participants{range}",
                    lamport(a.send_l),
                    members.len()
                ),
            ));
        } else if !collapsed.contains(&i) {
            draws.push(Draw::Arrow(a));
        }
    }
    let mut used: Vec<&Key> = Vec::new();
    for d in &draws {
        let keys = match d {
            Draw::Arrow(a) => vec![&a.from, &a.to],
            Draw::Broadcast(ks, _) => ks.clone(),
        };
        for k in keys {
            if !used.contains(&k) {
                used.push(k);
            }
        }
    }
    // Participants beside their node: those of the first half of the
    // nodes on the left, the others on the right.
    let mut home: HashMap<&Key, usize> = HashMap::new();
    for a in &arrows {
        if let (Key::Participant(_), Key::Node(n)) | (Key::Node(n), Key::Participant(_)) =
            (&a.from, &a.to)
        {
            let p = if matches!(a.from, Key::Participant(_)) {
                &a.from
            } else {
                &a.to
            };
            home.entry(p).or_insert(node_number[n.as_str()]);
        }
    }
    let half = nodes.len().div_ceil(2);
    let mut placed: Vec<(usize, usize, usize, &Key)> = Vec::new();
    let mut alternate = 0usize;
    for (seen, k) in used.iter().enumerate() {
        let (column, within) = match k {
            Key::UnknownSender => (0, 0),
            Key::Participant(_) => {
                let h = home.get(k).copied().unwrap_or(nodes.len());
                let left = if nodes.len() == 1 {
                    alternate += 1;
                    alternate % 2 == 1
                } else {
                    h < half
                };
                (if left { 1 } else { 3 }, h)
            }
            Key::Node(id) => (2, node_number[id.as_str()]),
            Key::UnknownReceiver => (4, 0),
        };
        placed.push((column, within, seen, k));
    }
    placed.sort();
    let index: HashMap<&Key, usize> = placed
        .iter()
        .enumerate()
        .map(|(i, (_, _, _, k))| (*k, i))
        .collect();
    let mut label_count: HashMap<String, usize> = HashMap::new();
    let lifelines: Vec<Lifeline> = placed
        .iter()
        .map(|(_, _, _, k)| {
            let (label, node, unknown) = match k {
                Key::UnknownSender => ("unknown sender".to_string(), false, true),
                Key::UnknownReceiver => ("unknown receiver".to_string(), false, true),
                Key::Node(id) => {
                    let place = match node_addr.get(id) {
                        Some(addr) => shorten(addr),
                        None => format!("id {}", shorten(&id.chars().take(8).collect::<String>())),
                    };
                    (
                        format!("node {} ({place})", node_number[id.as_str()] + 1),
                        true,
                        false,
                    )
                }
                Key::Participant(id) => {
                    let base = match names.get(id) {
                        Some(n) => shorten(n),
                        None => format!("participant {}", id.chars().take(8).collect::<String>()),
                    };
                    let n = label_count.entry(base.clone()).or_insert(0);
                    *n += 1;
                    let label = if *n == 1 {
                        base
                    } else {
                        format!("{base} ({n})")
                    };
                    (label, false, false)
                }
            };
            Lifeline {
                label,
                node,
                unknown,
            }
        })
        .collect();

    let items: Vec<Item> = draws
        .into_iter()
        .map(|d| match d {
            Draw::Arrow(a) => {
                let detail = a
                    .detail
                    .as_deref()
                    .map(|d| format!(" {}", shorten(d)))
                    .unwrap_or_default();
                Item::Arrow {
                    from: index[&a.from],
                    to: index[&a.to],
                    label: format!(
                        "{}{detail} [L={} → L={}]",
                        a.call,
                        lamport(a.send_l),
                        lamport(a.recv_l)
                    ),
                    dashed: a.dashed,
                }
            }
            Draw::Broadcast(ks, label) => Item::Broadcast {
                from: ks.iter().map(|k| index[k]).min().unwrap_or(0),
                to: ks.iter().map(|k| index[k]).max().unwrap_or(0),
                label,
            },
        })
        .collect();

    let mut notes = Vec::new();
    let total: usize = left_out.iter().sum();
    if total > 0 {
        let mut why = Vec::new();
        if left_out[0] > 0 {
            let who: Vec<String> = opts.participants.iter().map(|p| shorten(p)).collect();
            why.push(format!(
                "{} not involving {}",
                left_out[0],
                who.join(" or ")
            ));
        }
        if left_out[1] > 0 {
            why.push(format!(
                "{} outside Lamport time {}..{}",
                left_out[1],
                opts.from_lamport.map_or(String::new(), |l| l.to_string()),
                opts.to_lamport.map_or(String::new(), |l| l.to_string())
            ));
        }
        if left_out[2] > 0 {
            why.push(format!("{} outside the time window", left_out[2]));
        }
        notes.push(format!(
            "{total} of {} arrows left out: {}",
            arrows.len(),
            why.join(", ")
        ));
    }
    Ok(Diagram {
        lifelines,
        items,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use crate::trace::{Item, Options, trace};

    #[test]
    fn a_long_union_chain_does_not_overflow_the_stack() {
        let mut sets = super::UnionFind::default();
        let n = 200_000;
        // Each union puts a one-element set under the chain so far, the
        // worst case for a find without union by size or compression.
        for i in 1..n {
            sets.union(&format!("n{i}"), &format!("n{}", i - 1));
        }
        let root = sets.find("n0");
        assert_eq!(sets.find(&format!("n{}", n - 1)), root);
        assert_eq!(sets.find("n100000"), root);
        assert_ne!(sets.find("other"), root);
    }

    fn line(fields: &str) -> String {
        format!(
            r#"{{"timestamp":"2026-12-03T10:00:00Z","level":"INFO",{fields},"target":"chitty::diagram"}}"#
        )
    }

    fn node(id: &str, addr: &str, fields: &str) -> String {
        line(&format!(
            r#""role":"node","node":"{id}","generation":1,"node_addr":"{addr}",{fields}"#
        ))
    }

    /// Two nodes that each stamp an event and relay it to the other at the
    /// same time: each logs its send before the other's receive, a cycle
    /// when every arrow is one row.
    fn crossing() -> Vec<(String, String)> {
        let a = [
            node("a", "127.0.0.1:1", r#""message":"start""#),
            node(
                "a",
                "127.0.0.1:1",
                r#""message":"rpc","call":"ServerJoin","dir":"received","peer":"b","lamport_before":0,"lamport_after":0"#,
            ),
            node(
                "a",
                "127.0.0.1:1",
                r#""message":"stamp","participant":"P","participant_id":"p","event":"a:1:1","kind":"message","event_lamport":1"#,
            ),
            node(
                "a",
                "127.0.0.1:1",
                r#""message":"rpc","call":"RelayBatch","dir":"sent","peer":"b","participant":"P","participant_id":"p","event":"a:1:1","kind":"message","event_lamport":1"#,
            ),
            // Sent again after a reconnection: drawn once.
            node(
                "a",
                "127.0.0.1:1",
                r#""message":"rpc","call":"RelayBatch","dir":"sent","peer":"b","participant":"P","participant_id":"p","event":"a:1:1","kind":"message","event_lamport":1"#,
            ),
            node(
                "a",
                "127.0.0.1:1",
                r#""message":"rpc","call":"RelayBatch","dir":"received","peer":"b","participant":"Q","participant_id":"q","event":"b:1:1","kind":"message","event_lamport":2,"lamport_before":1,"lamport_after":3"#,
            ),
        ];
        let b = [
            node(
                "b",
                "127.0.0.1:2",
                r#""message":"start","boot":"127.0.0.1:1""#,
            ),
            node(
                "b",
                "127.0.0.1:2",
                r#""message":"stamp","participant":"Q","participant_id":"q","event":"b:1:1","kind":"message","event_lamport":2"#,
            ),
            node(
                "b",
                "127.0.0.1:2",
                r#""message":"rpc","call":"RelayBatch","dir":"sent","peer":"a","participant":"Q","participant_id":"q","event":"b:1:1","kind":"message","event_lamport":2"#,
            ),
            node(
                "b",
                "127.0.0.1:2",
                r#""message":"rpc","call":"RelayBatch","dir":"received","peer":"a","participant":"P","participant_id":"p","event":"a:1:1","kind":"message","event_lamport":1,"lamport_before":2,"lamport_after":3"#,
            ),
            // Never received: the log of its receiver ends before.
            node(
                "b",
                "127.0.0.1:2",
                r#""message":"rpc","call":"RelayBatch","dir":"sent","peer":"a","participant":"Q","participant_id":"q","event":"b:1:2","kind":"left","event_lamport":4"#,
            ),
        ];
        vec![
            ("a.jsonl".into(), a.join("\n")),
            ("b.jsonl".into(), b.join("\n")),
        ]
    }

    fn labels(logs: &[(String, String)]) -> Vec<String> {
        let mut warnings = Vec::new();
        let d = trace(logs, &Options::default(), &mut warnings).expect("a diagram");
        d.items
            .iter()
            .map(|i| match i {
                Item::Arrow {
                    from, to, label, ..
                } => format!(
                    "{} -> {}: {label}",
                    d.lifelines[*from].label, d.lifelines[*to].label
                ),
                Item::Broadcast { label, .. } => label.clone(),
            })
            .collect()
    }

    #[test]
    fn crossing_relays_are_both_drawn_once_in_any_file_order() {
        let logs = crossing();
        let drawn = labels(&logs);
        let a = "node 1 (127.0.0.1:1)";
        let b = "node 2 (127.0.0.1:2)";
        let mut sorted = drawn.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                format!("{a} -> {b}: RelayBatch P message [L=1 → L=3]"),
                format!("{b} -> {a}: RelayBatch Q left [L=4 → L=?]"),
                format!("{b} -> {a}: RelayBatch Q message [L=2 → L=3]"),
                // B's log has no ServerJoin sent: drawn from B all the same.
                format!("{b} -> {a}: ServerJoin [L=? → L=0]"),
            ]
        );
        let mut reversed = logs.clone();
        reversed.reverse();
        assert_eq!(labels(&reversed), drawn);
        assert_eq!(
            drawn.last().unwrap(),
            &format!("{b} -> {a}: RelayBatch Q left [L=4 → L=?]")
        );
    }

    #[test]
    fn the_same_log_twice_is_read_once() {
        let mut logs = crossing();
        logs.push(("a-copy.jsonl".into(), logs[0].1.clone()));
        let mut warnings = Vec::new();
        let d = trace(&logs, &Options::default(), &mut warnings).unwrap();
        assert_eq!(d.items.len(), 4);
        assert_eq!(
            warnings,
            ["a-copy.jsonl: the log of the same node a as a.jsonl; ignored"]
        );
    }

    #[test]
    fn logs_of_unrelated_nodes_are_refused() {
        let logs = vec![
            (
                "a.jsonl".to_string(),
                node("a", "127.0.0.1:1", r#""message":"start""#),
            ),
            (
                "c.jsonl".to_string(),
                node("c", "127.0.0.1:3", r#""message":"start""#),
            ),
        ];
        let err = trace(&logs, &Options::default(), &mut Vec::new()).unwrap_err();
        assert!(err.contains("2 different runs"), "{err}");
        assert!(err.contains("run 1: a.jsonl:1; run 2: c.jsonl:1"), "{err}");
    }
}
