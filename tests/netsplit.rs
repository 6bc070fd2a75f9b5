//! Network splits on a real (virtual) network: three `chitty server`
//! processes, each in a network namespace of its own on one bridge, and
//! `chitty client` processes inside the node namespaces (a client reaches
//! only its own node's address). A link is cut with iptables DROP rules on
//! INPUT in both namespaces, so packets vanish: senders see silence, not an
//! error (see `common::netns`).
//!
//! Every scenario runs two participants per node, each publishing numbered
//! messages (`#1`, `#2`, ...) at a steady pace before, during and after the
//! fault, then waits until every participant printed every message, and
//! checks what the clients printed. Needs root, `ip` (iproute2) and
//! `iptables`; without them the tests fail saying so.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::netns::*;
use common::*;

/// Node flags: production-like ratios, fast enough for a test.
const FLAGS: [&str; 6] = [
    "--heartbeat-ms",
    "200",
    "--failure-timeout-ms",
    "1000",
    "--grace-ms",
    "3000",
];

/// Pause between two rounds of the publishers (pacing, not waiting).
const PACE: Duration = Duration::from_millis(150);
/// Publishing before the fault.
const BEFORE: Duration = Duration::from_secs(2);
/// How long a split lasts.
const SPLIT: Duration = Duration::from_secs(15);
/// Publishing after the heal.
const AFTER: Duration = Duration::from_secs(3);
/// Longest wait, after the publishers stopped, for every message everywhere.
const DELIVERY_LIMIT: Duration = Duration::from_secs(20);
/// Longest wait, from the heal, until every node lists all three.
const MEMBERSHIP_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for anything else to settle (participant lists, one side
/// seeing its own messages during a split).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait, during a split, for one side to hear its own messages.
const SAME_SIDE_LIMIT: Duration = Duration::from_secs(3);

/// Two participants per node; node indexes are 0-based (node 3 is 2).
const PLACEMENT: [(usize, &str); 6] = [
    (0, "p1a"),
    (0, "p1b"),
    (1, "p2a"),
    (1, "p2b"),
    (2, "p3a"),
    (2, "p3b"),
];

// ---------------------------------------------------------------------------
// What the client prints about the cluster (the one place for these texts)
// ---------------------------------------------------------------------------

/// A client's line about the cluster rather than a chat event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Notice {
    /// `[cluster] unreachable: ADDR[, ADDR...]`
    Unreachable(Vec<String>),
    /// `[cluster] back: ADDR[, ADDR...]`
    Back(Vec<String>),
    /// `[delivered after a network split]`, before a run of late messages.
    DeliveredAfterSplit,
}

/// Parses one output line into a [`Notice`]; `None` for any other line.
fn notice(line: &str) -> Option<Notice> {
    let addrs = |rest: &str| -> Vec<String> {
        rest.split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect()
    };
    let line = line.trim_end();
    if line == "[delivered after a network split]" {
        Some(Notice::DeliveredAfterSplit)
    } else if let Some(rest) = line.strip_prefix("[cluster] unreachable: ") {
        Some(Notice::Unreachable(addrs(rest)))
    } else {
        line.strip_prefix("[cluster] back: ")
            .map(|rest| Notice::Back(addrs(rest)))
    }
}

// ---------------------------------------------------------------------------
// A run: the cluster, the publishers, and marks of when things happened
// ---------------------------------------------------------------------------

/// How far everyone was at one moment: numbers typed, lines printed.
#[derive(Debug, Clone)]
struct Mark {
    /// Per talker, the last number typed (`Talker::sent`).
    sent: Vec<u64>,
    /// Per talker, how many lines it had printed on stdout and stderr.
    printed: Vec<(usize, usize)>,
}

/// Field order matters: the clients are killed first, then the nodes, then
/// the namespaces go.
struct Run {
    name: &'static str,
    talkers: Vec<Talker>,
    net: NetCluster,
    /// Clients that could no longer be written to (they exited).
    write_failures: BTreeMap<String, String>,
    started: Instant,
}

impl Run {
    fn start(name: &'static str) -> Self {
        let started = Instant::now();
        let net = NetCluster::start(3, &FLAGS);
        let talkers = net
            .spawn_participants(&PLACEMENT)
            .into_iter()
            .map(Talker::new)
            .collect();
        println!(
            "{name}: cluster and participants up in {:?}",
            started.elapsed()
        );
        Run {
            name,
            talkers,
            net,
            write_failures: BTreeMap::new(),
            started,
        }
    }

    /// Every talker types its next number, round after round, for `span`.
    fn publish_for(&mut self, span: Duration) {
        let end = Instant::now() + span;
        while Instant::now() < end {
            for talker in &mut self.talkers {
                if self.write_failures.contains_key(talker.name()) {
                    continue;
                }
                if let Err(e) = talker.try_say_next() {
                    self.write_failures.insert(talker.name().to_string(), e);
                }
            }
            std::thread::sleep(PACE);
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            sent: self.talkers.iter().map(|t| t.sent).collect(),
            printed: self
                .talkers
                .iter()
                .map(|t| {
                    (
                        t.client.stdout.snapshot().len(),
                        t.client.stderr.snapshot().len(),
                    )
                })
                .collect(),
        }
    }

    /// Indexes of the talkers on node `node`.
    fn on_node(&self, node: usize) -> Vec<usize> {
        (0..PLACEMENT.len())
            .filter(|t| PLACEMENT[*t].0 == node)
            .collect()
    }

    /// Starts measuring, on a thread, how long after now every node lists
    /// all three nodes again.
    fn measure_membership(&self) -> std::thread::JoinHandle<Result<Duration, String>> {
        let targets: Vec<(String, String)> = (0..3).map(|i| self.net.target(i)).collect();
        let expected = self.net.addrs();
        std::thread::spawn(move || wait_all_list(&targets, &expected, MEMBERSHIP_LIMIT))
    }

    /// After the last publish: the checks every scenario shares. Returns
    /// the faults found.
    fn common_checks(
        &mut self,
        membership: std::thread::JoinHandle<Result<Duration, String>>,
    ) -> Vec<String> {
        let mut faults = self.net.exited_nodes();
        for (who, e) in &self.write_failures {
            faults.push(format!("{who} could no longer be written to: {e}"));
        }
        let waited = Instant::now();
        match wait_delivered(&self.talkers, DELIVERY_LIMIT) {
            Ok(()) => println!(
                "{}: every message everywhere {:?} after the publishers stopped",
                self.name,
                waited.elapsed()
            ),
            Err(e) => faults.push(e),
        }
        faults.extend(delivery_faults(&self.talkers));
        faults.extend(local_clock_faults(&self.talkers));
        match membership.join().expect("the membership thread panicked") {
            Ok(took) => println!(
                "{}: every node listed all three nodes {took:?} after the heal",
                self.name
            ),
            Err(e) => faults.push(format!("membership after the heal: {e}")),
        }
        faults.extend(participant_list_faults(&self.net, SETTLE_LIMIT));
        faults
    }

    /// Fails the test with every fault, or reports how long it took.
    fn conclude(mut self, mut faults: Vec<String>) {
        // A node that exited late shows too.
        for exited in self.net.exited_nodes() {
            if !faults.contains(&exited) {
                faults.push(exited);
            }
        }
        println!("{}: took {:?}", self.name, self.started.elapsed());
        assert!(
            faults.is_empty(),
            "{}: {} fault(s):\n- {}",
            self.name,
            faults.len(),
            faults.join("\n- ")
        );
    }
}

// ---------------------------------------------------------------------------
// Checks on what the clients printed (each returns the faults it found)
// ---------------------------------------------------------------------------

/// What a sender's publish errors say: the numbers it gave up on (they may
/// or may not have been delivered), and how many errors name no message.
fn publish_failures(talker: &Talker) -> (BTreeSet<u64>, usize) {
    let mut numbers = BTreeSet::new();
    let mut unnamed = 0;
    for line in talker.publish_errors() {
        // error: gave up sending "#12": ...
        let named = line
            .split_once("gave up sending \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .and_then(|(text, _)| number_of(text));
        match named {
            Some(n) => {
                numbers.insert(n);
            }
            None => unnamed += 1,
        }
    }
    (numbers, unnamed)
}

/// The last number of `sender` that must arrive: the last one typed that
/// no error names.
fn last_required(sender: &Talker) -> Option<u64> {
    let (failed, _) = publish_failures(sender);
    (1..=sender.sent).rev().find(|n| !failed.contains(n))
}

/// Polls until every talker printed every sender's last required message;
/// on timeout says who is missing what.
fn wait_delivered(talkers: &[Talker], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let mut missing = Vec::new();
        for observer in talkers {
            let by_sender = numbers_by_sender(&observer.client.events());
            for sender in talkers {
                let Some(last) = last_required(sender) else {
                    continue;
                };
                let seen = by_sender.get(sender.name());
                if !seen.is_some_and(|numbers| numbers.contains(&last)) {
                    let got = seen.and_then(|n| n.last()).copied().unwrap_or(0);
                    missing.push(format!(
                        "{} has {}'s messages up to #{got} of #{last}",
                        observer.name(),
                        sender.name()
                    ));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not every message reached everyone within {limit:?} after the publishers \
                 stopped: {missing:#?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sorted numbers as short ranges: `#3..=#7, #9`.
fn ranges(numbers: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            format!("#{}", numbers[i])
        } else {
            format!("#{}..=#{}", numbers[i], numbers[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// Every message sent without error reached every participant exactly once,
/// in each sender's order (per-sender FIFO), with the same Lamport
/// timestamp everywhere; a message an error names may be missing, but then
/// everywhere.
fn delivery_faults(talkers: &[Talker]) -> Vec<String> {
    let mut faults = Vec::new();
    let transcripts: Vec<(&str, Vec<EventLine>)> = talkers
        .iter()
        .map(|t| (t.name(), t.client.events()))
        .collect();
    for (who, events) in &transcripts {
        for fault in transcript_faults(events) {
            faults.push(format!("{who}: {fault}"));
        }
    }
    for sender in talkers {
        let (failed, unnamed) = publish_failures(sender);
        let mut sets: BTreeMap<Vec<u64>, Vec<&str>> = BTreeMap::new();
        for (who, events) in &transcripts {
            let numbers = numbers_by_sender(events)
                .remove(sender.name())
                .unwrap_or_default();
            let missing: Vec<u64> = (1..=sender.sent)
                .filter(|n| !numbers.contains(n) && !failed.contains(n))
                .collect();
            if missing.len() > unnamed {
                faults.push(format!(
                    "{who} never printed {}'s {} (sent {}, {unnamed} unnamed errors)",
                    sender.name(),
                    ranges(&missing),
                    sender.sent
                ));
            }
            if let Some(n) = numbers.iter().find(|n| **n == 0 || **n > sender.sent) {
                faults.push(format!(
                    "{who} printed {}'s #{n}, never sent",
                    sender.name()
                ));
            }
            let mut set = numbers;
            set.sort();
            set.dedup();
            sets.entry(set).or_default().push(who);
        }
        if sets.len() > 1 {
            let summary: Vec<String> = sets
                .iter()
                .map(|(set, who)| format!("{who:?} printed {} of them", set.len()))
                .collect();
            faults.push(format!(
                "participants disagree on which of {}'s messages arrived: {summary:?}",
                sender.name()
            ));
        }
    }
    faults.extend(timestamp_disagreements(&transcripts));
    faults
}

/// Each client's printed local Lamport clock only grows.
fn local_clock_faults(talkers: &[Talker]) -> Vec<String> {
    let mut faults = Vec::new();
    for talker in talkers {
        let events = talker.client.events();
        if let Some(w) = events.windows(2).find(|w| w[1].local <= w[0].local) {
            faults.push(format!(
                "{}'s local clock did not grow: {:?} then {:?}",
                talker.name(),
                w[0],
                w[1]
            ));
        }
    }
    faults
}

/// Nobody was ever announced as left.
fn never_left_faults(talkers: &[Talker]) -> Vec<String> {
    let mut faults = Vec::new();
    for observer in talkers {
        for (_, name) in PLACEMENT {
            let lefts = lefts_of(&observer.client, name);
            if !lefts.is_empty() {
                faults.push(format!(
                    "{} printed {name} as left: {lefts:?}",
                    observer.name()
                ));
            }
        }
    }
    faults
}

/// At most one "left" line per participant and client (one split, one
/// departure at most), and a participant announced as left (none really
/// left) is announced as joined again afterwards.
fn left_and_back_faults(talkers: &[Talker]) -> Vec<String> {
    let mut faults = Vec::new();
    for observer in talkers {
        let events = observer.client.events();
        for (_, name) in PLACEMENT {
            let lefts: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.left().is_some_and(|(n, _)| n == name))
                .map(|(i, _)| i)
                .collect();
            if lefts.len() > 1 {
                faults.push(format!(
                    "{} printed {name} as left {} times",
                    observer.name(),
                    lefts.len()
                ));
            }
            if let Some(&last) = lefts.last() {
                let back = events[last..]
                    .iter()
                    .any(|e| e.joined().is_some_and(|(n, _)| n == name));
                if !back {
                    faults.push(format!(
                        "{} printed {name} as left ({}) and never as joined again",
                        observer.name(),
                        events[last].body
                    ));
                }
            }
        }
    }
    faults
}

/// Polls until every node lists the same participants: exactly the six.
fn participant_list_faults(net: &NetCluster, limit: Duration) -> Vec<String> {
    let mut expected: Vec<String> = PLACEMENT.iter().map(|(_, n)| n.to_string()).collect();
    expected.sort();
    let deadline = Instant::now() + limit;
    loop {
        let mut wrong = Vec::new();
        for i in 0..net.servers.len() {
            match net.participants_listed(i) {
                Ok(list) if list == expected => {}
                Ok(list) => wrong.push(format!("node {} lists {list:?}", i + 1)),
                Err(e) => wrong.push(e),
            }
        }
        if wrong.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return vec![format!(
                "participant lists after the heal, expected {expected:?} on every node: {wrong:?}"
            )];
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each of `clients` printed, before the heal, `[cluster] unreachable:`
/// lines naming every one of `others`, and after the heal `[cluster] back:`
/// lines naming them (on stdout or stderr; several lines may share them).
fn split_notice_faults(
    run: &Run,
    clients: &[usize],
    others: &[String],
    heal: &Mark,
) -> Vec<String> {
    let mut faults = Vec::new();
    let others: BTreeSet<&str> = others.iter().map(String::as_str).collect();
    for &t in clients {
        let talker = &run.talkers[t];
        let (out_at_heal, err_at_heal) = heal.printed[t];
        let streams = [
            (talker.client.stdout.snapshot(), out_at_heal),
            (talker.client.stderr.snapshot(), err_at_heal),
        ];
        let mut unreachable: BTreeSet<String> = BTreeSet::new();
        let mut back: BTreeSet<String> = BTreeSet::new();
        let mut all = Vec::new();
        for (lines, at_heal) in &streams {
            for (i, line) in lines.iter().enumerate() {
                match notice(line) {
                    Some(Notice::Unreachable(addrs)) if i < *at_heal => {
                        all.push(line.clone());
                        unreachable.extend(addrs)
                    }
                    Some(Notice::Back(addrs)) if i >= *at_heal => {
                        all.push(line.clone());
                        back.extend(addrs)
                    }
                    Some(Notice::Unreachable(_) | Notice::Back(_)) => all.push(line.clone()),
                    _ => {}
                }
            }
        }
        let not_unreachable: Vec<&&str> = others
            .iter()
            .filter(|a| !unreachable.contains(**a))
            .collect();
        let not_back: Vec<&&str> = others.iter().filter(|a| !back.contains(**a)).collect();
        if !not_unreachable.is_empty() || !not_back.is_empty() {
            faults.push(format!(
                "{} did not print `[cluster] unreachable:` for {not_unreachable:?} during the \
                 split and/or `[cluster] back:` for {not_back:?} after the heal; its \
                 [cluster] lines: {all:?}",
                talker.name()
            ));
        }
    }
    faults
}

/// Every message that `senders` typed during the split (between the marks)
/// was printed by each of `receivers` after a `[delivered after a network
/// split]` line printed after the split began.
fn late_delivery_faults(
    run: &Run,
    receivers: &[usize],
    senders: &[usize],
    cut: &Mark,
    heal: &Mark,
) -> Vec<String> {
    let mut faults = Vec::new();
    for &r in receivers {
        let receiver = &run.talkers[r];
        let lines = receiver.client.stdout.snapshot();
        let from = cut.printed[r].0.min(lines.len());
        let first_marker = lines[from..]
            .iter()
            .position(|l| notice(l) == Some(Notice::DeliveredAfterSplit))
            .map(|i| i + from);
        for &s in senders {
            let sender = run.talkers[s].name();
            let during: BTreeSet<u64> = (cut.sent[s] + 1..=heal.sent[s]).collect();
            if during.is_empty() {
                continue;
            }
            let first_late = lines.iter().position(|l| {
                EventLine::parse(l).is_some_and(|e| {
                    e.message().is_some_and(|(who, text)| {
                        who == sender && number_of(text).is_some_and(|n| during.contains(&n))
                    })
                })
            });
            match (first_marker, first_late) {
                (_, None) => {} // missing messages are reported by delivery_faults
                (Some(m), Some(l)) if m < l => {}
                (marker, Some(l)) => faults.push(format!(
                    "{} printed {sender}'s split-time message at line {l}: {:?}, but the first \
                     `[delivered after a network split]` after the split began is at {marker:?}",
                    receiver.name(),
                    lines[l]
                )),
            }
        }
    }
    faults
}

/// Waits until each of `observers` printed the messages `senders` typed up
/// to `mark` (the same side of a split hears itself while cut off).
fn same_side_faults(run: &Run, observers: &[usize], senders: &[usize], mark: &Mark) -> Vec<String> {
    let deadline = Instant::now() + SAME_SIDE_LIMIT;
    loop {
        let mut missing = Vec::new();
        for &o in observers {
            let by_sender = numbers_by_sender(&run.talkers[o].client.events());
            for &s in senders {
                let want = mark.sent[s];
                let name = run.talkers[s].name();
                if !by_sender.get(name).is_some_and(|n| n.contains(&want)) {
                    missing.push(format!("{} lacks {name}'s #{want}", run.talkers[o].name()));
                }
            }
        }
        if missing.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return vec![format!(
                "during the split, one side did not hear itself within {SAME_SIDE_LIMIT:?}: {missing:?}"
            )];
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// The sanity test: the harness itself
// ---------------------------------------------------------------------------

#[test]
fn three_nodes_in_namespaces_chat_and_a_cut_silences_a_link() {
    let started = Instant::now();
    let mut net = NetCluster::start(3, &FLAGS);
    let names: Vec<String> = net.world.namespaces().to_vec();
    let mut clients = net.spawn_participants(&[(0, "ann"), (1, "bob"), (2, "cat")]);
    clients[0].say("hello from node 1");
    clients[2].say("hello from node 3");
    for client in &clients {
        client.wait_for_message("ann", "hello from node 1");
        client.wait_for_message("cat", "hello from node 3");
    }

    // Plain listeners in the namespaces of nodes 1 and 3 (a socket stays in
    // the namespace it was made in), so that what is checked does not
    // depend on the nodes, which may react to the cut.
    let (ns1, ns2, ns3) = (
        net.world.nodes[0].clone(),
        net.world.nodes[1].clone(),
        net.world.nodes[2].clone(),
    );
    let listen_in = |ns: &str, ip: String| {
        in_ns(ns, || std::net::TcpListener::bind(format!("{ip}:0")))
            .unwrap_or_else(|e| panic!("bind a listener in {ns}: {e}"))
    };
    let listener1 = listen_in(&ns1, node_ip(0));
    let listener3 = listen_in(&ns3, node_ip(2));
    let open1 = listener1.local_addr().expect("its address").to_string();
    let open3 = listener3.local_addr().expect("its address").to_string();
    let closed3 = format!("{}:9", node_ip(2));
    let limit = Duration::from_millis(1500);
    let check = |ns: &str, addr: &str, expected: Connect, when: &str| {
        let got = tcp_connect_from(ns, addr, limit).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, expected, "{when}: TCP connect from {ns} to {addr}");
    };

    check(&ns1, &open3, Connect::Connected, "before the cut");
    check(&ns1, &closed3, Connect::Refused, "before the cut");
    check(&ns3, &open1, Connect::Connected, "before the cut");

    net.world.cut(0, 2);
    let cut_at = Instant::now();
    check(&ns1, &open3, Connect::TimedOut, "link 1-3 cut");
    check(
        &ns1,
        &closed3,
        Connect::TimedOut,
        "link 1-3 cut (no RST either)",
    );
    check(&ns3, &open1, Connect::TimedOut, "link 1-3 cut");
    check(&ns2, &open3, Connect::Connected, "link 1-3 cut, 2-3 intact");
    check(&ns2, &open1, Connect::Connected, "link 1-3 cut, 1-2 intact");
    println!("sanity: the cut was checked in {:?}", cut_at.elapsed());

    net.world.heal(0, 2);
    check(&ns1, &open3, Connect::Connected, "after the heal");
    check(&ns1, &closed3, Connect::Refused, "after the heal");
    check(&ns3, &open1, Connect::Connected, "after the heal");
    drop((listener1, listener3));

    // Cleanup: dropping the clients and the cluster leaves nothing behind.
    let mut pids: Vec<u32> = clients.iter().map(|c| c.child.id()).collect();
    pids.extend(net.servers.iter().map(|s| s.child.id()));
    drop(clients);
    drop(net);
    let left: Vec<String> = our_namespaces()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let alive: Vec<u32> = pids
        .into_iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
    println!("sanity: took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------

/// Node 3 (and its participants) cut off from nodes 1 and 2 for 15 s while
/// everyone publishes, then healed; `minority_checked` adds the checks of
/// the minority's messages reaching the majority late.
fn node_3_cut_off(name: &'static str, minority_checked: bool) {
    let mut run = Run::start(name);
    let (majority, minority) = ([run.on_node(0), run.on_node(1)].concat(), run.on_node(2));
    run.publish_for(BEFORE);
    let cut = run.mark();
    run.net.world.isolate(2);
    run.publish_for(SPLIT);
    let mut faults = Vec::new();
    if minority_checked {
        let now = run.mark();
        faults.extend(same_side_faults(&run, &minority, &minority, &now));
        faults.extend(same_side_faults(&run, &majority, &majority, &now));
    }
    let heal = run.mark();
    run.net.world.heal_all();
    let membership = run.measure_membership();
    run.publish_for(AFTER);
    faults.extend(run.common_checks(membership));
    faults.extend(left_and_back_faults(&run.talkers));
    let others = vec![run.net.addr(0), run.net.addr(1)];
    faults.extend(split_notice_faults(&run, &minority, &others, &heal));
    faults.extend(late_delivery_faults(
        &run, &minority, &majority, &cut, &heal,
    ));
    if minority_checked {
        faults.extend(late_delivery_faults(
            &run, &majority, &minority, &cut, &heal,
        ));
    }
    run.conclude(faults);
}

#[test]
fn one_node_isolated_for_15s_then_healed() {
    node_3_cut_off("one_node_isolated_for_15s_then_healed", false);
}

#[test]
fn a_minority_publishes_while_cut_off() {
    node_3_cut_off("a_minority_publishes_while_cut_off", true);
}

#[test]
fn one_link_of_three_cut_for_15s() {
    let mut run = Run::start("one_link_of_three_cut_for_15s");
    run.publish_for(BEFORE);
    run.net.world.cut(0, 2);
    run.publish_for(SPLIT);
    run.net.world.heal(0, 2);
    let membership = run.measure_membership();
    run.publish_for(AFTER);
    let mut faults = run.common_checks(membership);
    faults.extend(never_left_faults(&run.talkers));
    run.conclude(faults);
}

#[test]
fn a_link_flapping_every_3s() {
    let mut run = Run::start("a_link_flapping_every_3s");
    run.publish_for(BEFORE);
    let mut membership = None;
    for round in 0..10 {
        run.net.world.cut(0, 2);
        run.publish_for(Duration::from_secs(1));
        run.net.world.heal(0, 2);
        if round == 9 {
            membership = Some(run.measure_membership());
        }
        run.publish_for(Duration::from_secs(2));
    }
    let membership = membership.expect("measured after the last heal");
    run.publish_for(AFTER);
    let mut faults = run.common_checks(membership);
    faults.extend(never_left_faults(&run.talkers));
    run.conclude(faults);
}
