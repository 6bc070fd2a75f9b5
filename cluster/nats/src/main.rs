//! Chat fan-out benchmark against a NATS cluster (core NATS pub/sub, no JetStream).
//!
//! S subscribers (one connection each, round-robin over the servers) all subscribe
//! to one subject; P publishers (one connection each, round-robin) each send M
//! 64-byte messages. Every subscriber should receive all P*M messages.
//!
//! Payload layout (little endian): pub_idx u32 | seq u64 | send_us u64 | due_us u64 | zero pad to 64.
//! Times are microseconds since one `Instant` shared by the whole process.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

const PAYLOAD_LEN: usize = 64;
const PROBE_SEQ: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Args {
    subs: usize,
    pubs: usize,
    msgs: u64,
    rate: Option<f64>,
    window: u64,
    urls: Vec<String>,
    pids: Vec<u32>,
    monitors: Vec<String>,
    clk_tck: f64,
    subject: String,
    stall_secs: u64,
    warmup_secs: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: nats-compare --urls nats://h:p,... [--subs 30] [--pubs 3] [--msgs 60000] \
         [--rate R] [--window 2000] [--pids p1,p2,p3] [--monitors h:p,...] [--clk-tck 100] \
         [--subject chat.bench] [--stall-secs 10] [--warmup-secs 30]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        subs: 30,
        pubs: 3,
        msgs: 60_000,
        rate: None,
        window: 2000,
        urls: vec![],
        pids: vec![],
        monitors: vec![],
        clk_tck: 100.0,
        subject: "chat.bench".into(),
        stall_secs: 10,
        warmup_secs: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        let list = |s: String| -> Vec<String> {
            s.split(',').filter(|x| !x.is_empty()).map(|x| x.to_string()).collect()
        };
        match k.as_str() {
            "--subs" => a.subs = v().parse().unwrap_or_else(|_| usage()),
            "--pubs" => a.pubs = v().parse().unwrap_or_else(|_| usage()),
            "--msgs" => a.msgs = v().parse().unwrap_or_else(|_| usage()),
            "--rate" => a.rate = Some(v().parse().unwrap_or_else(|_| usage())),
            "--window" => a.window = v().parse().unwrap_or_else(|_| usage()),
            "--urls" => a.urls = list(v()),
            "--pids" => {
                a.pids = list(v()).iter().map(|p| p.parse().unwrap_or_else(|_| usage())).collect()
            }
            "--monitors" => a.monitors = list(v()),
            "--clk-tck" => a.clk_tck = v().parse().unwrap_or_else(|_| usage()),
            "--subject" => a.subject = v(),
            "--stall-secs" => a.stall_secs = v().parse().unwrap_or_else(|_| usage()),
            "--warmup-secs" => a.warmup_secs = v().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {k}");
                usage()
            }
        }
    }
    if a.urls.is_empty() || a.subs == 0 || a.pubs == 0 || a.msgs == 0 {
        usage()
    }
    if a.msgs >= PROBE_SEQ {
        usage()
    }
    a
}

fn encode(pub_idx: u32, seq: u64, send_us: u64, due_us: u64) -> Bytes {
    let mut b = [0u8; PAYLOAD_LEN];
    b[0..4].copy_from_slice(&pub_idx.to_le_bytes());
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..20].copy_from_slice(&send_us.to_le_bytes());
    b[20..28].copy_from_slice(&due_us.to_le_bytes());
    Bytes::copy_from_slice(&b)
}

fn decode(b: &[u8]) -> Option<(u32, u64, u64, u64)> {
    if b.len() != PAYLOAD_LEN {
        return None;
    }
    Some((
        u32::from_le_bytes(b[0..4].try_into().ok()?),
        u64::from_le_bytes(b[4..12].try_into().ok()?),
        u64::from_le_bytes(b[12..20].try_into().ok()?),
        u64::from_le_bytes(b[20..28].try_into().ok()?),
    ))
}

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU64);

struct Shared {
    t0: Instant,
    /// unique data messages received, per subscriber
    recv: Vec<Padded>,
    /// subscribers that have seen a probe from every publisher
    ready: AtomicUsize,
    /// data messages handed to the client library, all publishers together
    sent: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }
    fn min_recv(&self) -> u64 {
        self.recv.iter().map(|r| r.0.load(Relaxed)).min().unwrap_or(0)
    }
    fn total_recv(&self) -> u64 {
        self.recv.iter().map(|r| r.0.load(Relaxed)).sum()
    }
}

#[derive(Default)]
struct Events {
    slow_consumer: AtomicU64,
    disconnected: AtomicU64,
    connected: AtomicU64,
    server_error: AtomicU64,
    client_error: AtomicU64,
    other: AtomicU64,
}

struct SubResult {
    lat_us: Vec<u32>,
    lat_due_us: Vec<u32>,
    counts: Vec<Vec<u8>>,
    ooo: Vec<u64>,
    last_recv_us: u64,
    bad: u64,
}

async fn run_sub(
    idx: usize,
    mut sub: async_nats::Subscriber,
    sh: Arc<Shared>,
    a: Arc<Args>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let p = a.pubs;
    let m = a.msgs as usize;
    let rate_mode = a.rate.is_some();
    let mut seen_probe = vec![false; p];
    let mut n_seen = 0usize;
    let mut r = SubResult {
        lat_us: Vec::with_capacity(p * m),
        lat_due_us: if rate_mode { Vec::with_capacity(p * m) } else { Vec::new() },
        counts: vec![vec![0u8; m]; p],
        ooo: vec![0; p],
        last_recv_us: 0,
        bad: 0,
    };
    let mut max_seq: Vec<i64> = vec![-1; p];
    let mut unique: u64 = 0;
    loop {
        let msg = tokio::select! {
            biased;
            m = sub.next() => m,
            _ = stop.changed() => break,
        };
        let Some(msg) = msg else { break };
        let now = sh.now_us();
        let Some((pi, seq, send_us, due_us)) = decode(&msg.payload) else {
            r.bad += 1;
            continue;
        };
        let pi = pi as usize;
        if pi >= p {
            r.bad += 1;
            continue;
        }
        if seq == PROBE_SEQ {
            if !seen_probe[pi] {
                seen_probe[pi] = true;
                n_seen += 1;
                if n_seen == p {
                    sh.ready.fetch_add(1, Relaxed);
                }
            }
            continue;
        }
        if seq as usize >= m {
            r.bad += 1;
            continue;
        }
        let c = &mut r.counts[pi][seq as usize];
        if *c == 0 {
            unique += 1;
            sh.recv[idx].0.store(unique, Relaxed);
        }
        *c = c.saturating_add(1);
        if (seq as i64) < max_seq[pi] {
            r.ooo[pi] += 1;
        } else {
            max_seq[pi] = seq as i64;
        }
        r.lat_us.push(now.saturating_sub(send_us).min(u32::MAX as u64) as u32);
        if rate_mode {
            r.lat_due_us.push(now.saturating_sub(due_us).min(u32::MAX as u64) as u32);
        }
        r.last_recv_us = now;
    }
    r
}

struct PubResult {
    first_send_us: u64,
    last_send_us: u64,
    sent: u64,
    max_late_us: u64,
    sum_late_us: u64,
    errors: u64,
}

async fn run_pub(
    idx: usize,
    client: async_nats::Client,
    sh: Arc<Shared>,
    a: Arc<Args>,
    start_us: u64,
) -> PubResult {
    let subject = a.subject.clone();
    let mut r = PubResult {
        first_send_us: u64::MAX,
        last_send_us: 0,
        sent: 0,
        max_late_us: 0,
        sum_late_us: 0,
        errors: 0,
    };
    let mut limit = 0u64; // cached: may send while global sent < limit
    for seq in 0..a.msgs {
        if sh.stop.load(Relaxed) {
            break;
        }
        let due_us = if let Some(rate) = a.rate {
            let k = seq * a.pubs as u64 + idx as u64;
            let due = start_us + (k as f64 * 1e6 / rate) as u64;
            let deadline = sh.t0 + Duration::from_micros(due);
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            due
        } else {
            // window flow control: at most `window` messages (all publishers) ahead
            // of the slowest subscriber.
            loop {
                let s = sh.sent.load(Relaxed);
                if s < limit {
                    break;
                }
                limit = sh.min_recv() + a.window;
                if s < limit {
                    break;
                }
                if sh.stop.load(Relaxed) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            0
        };
        sh.sent.fetch_add(1, Relaxed);
        let now = sh.now_us();
        if a.rate.is_some() {
            let late = now.saturating_sub(due_us);
            r.max_late_us = r.max_late_us.max(late);
            r.sum_late_us += late;
        }
        r.first_send_us = r.first_send_us.min(now);
        r.last_send_us = now;
        match client.publish(subject.clone(), encode(idx as u32, seq, now, due_us)).await {
            Ok(()) => r.sent += 1,
            Err(_) => r.errors += 1,
        }
    }
    if client.flush().await.is_err() {
        r.errors += 1;
    }
    r
}

/// utime+stime in clock ticks from /proc/PID/stat.
fn cpu_ticks(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the ")" of comm: state is field 3; utime=14, stime=15
    let Some(rp) = s.rfind(')') else { return 0 };
    let f: Vec<&str> = s[rp + 2..].split_whitespace().collect();
    let ut: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
    let st: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    ut + st
}

/// (busy, total) jiffies of the whole machine from /proc/stat (busy = total - idle - iowait).
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(l) = s.lines().next() else { return (0, 0) };
    let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn status_field(pid: &str, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// GET http://hostport/varz and pull out an integer field.
fn varz_field(hostport: &str, field: &str) -> Option<u64> {
    let mut s = std::net::TcpStream::connect(hostport).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET /varz HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let key = format!("\"{field}\":");
    let i = body.find(&key)? + key.len();
    let rest = body[i..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // nearest rank
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let a = Arc::new(parse_args());
    let t0 = Instant::now();
    let n_srv = a.urls.len();
    let sh = Arc::new(Shared {
        t0,
        recv: (0..a.subs).map(|_| Padded::default()).collect(),
        ready: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let ev = Arc::new(Events::default());
    let opts = || {
        let ev = ev.clone();
        async_nats::ConnectOptions::new().event_callback(move |e| {
            let ev = ev.clone();
            async move {
                match &e {
                    async_nats::Event::SlowConsumer(_) => ev.slow_consumer.fetch_add(1, Relaxed),
                    async_nats::Event::Disconnected => ev.disconnected.fetch_add(1, Relaxed),
                    async_nats::Event::Connected => ev.connected.fetch_add(1, Relaxed),
                    async_nats::Event::ServerError(_) => ev.server_error.fetch_add(1, Relaxed),
                    async_nats::Event::ClientError(_) => ev.client_error.fetch_add(1, Relaxed),
                    _ => ev.other.fetch_add(1, Relaxed),
                };
                if !matches!(e, async_nats::Event::SlowConsumer(_) | async_nats::Event::Connected | async_nats::Event::Closed) {
                    eprintln!("nats event: {e}");
                }
            }
        })
    };

    let mode = match a.rate {
        Some(r) => format!("rate {r} msg/s"),
        None => format!("full speed, window {}", a.window),
    };
    eprintln!(
        "config: S={} P={} M={} ({}) servers={} subject={}",
        a.subs, a.pubs, a.msgs, mode, n_srv, a.subject
    );

    // subscribers: own connection each, round-robin over servers
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_clients = Vec::with_capacity(a.subs);
    let mut sub_tasks = Vec::with_capacity(a.subs);
    for i in 0..a.subs {
        let url = &a.urls[i % n_srv];
        let c = opts().connect(url.as_str()).await.unwrap_or_else(|e| {
            eprintln!("subscriber {i}: connect {url}: {e}");
            std::process::exit(1)
        });
        let s = c.subscribe(a.subject.clone()).await.expect("subscribe");
        c.flush().await.expect("flush");
        sub_tasks.push(tokio::spawn(run_sub(i, s, sh.clone(), a.clone(), stop_rx.clone())));
        sub_clients.push(c);
    }
    let mut pub_clients = Vec::with_capacity(a.pubs);
    for j in 0..a.pubs {
        let url = &a.urls[j % n_srv];
        let c = opts().connect(url.as_str()).await.unwrap_or_else(|e| {
            eprintln!("publisher {j}: connect {url}: {e}");
            std::process::exit(1)
        });
        pub_clients.push(c);
    }

    // warm-up: probes until every subscriber has seen one from every publisher
    let wu_start = Instant::now();
    let mut probes = 0u64;
    while sh.ready.load(Relaxed) < a.subs {
        if wu_start.elapsed() > Duration::from_secs(a.warmup_secs) {
            eprintln!(
                "FAIL: warm-up: only {}/{} subscribers saw probes from all publishers after {}s",
                sh.ready.load(Relaxed),
                a.subs,
                a.warmup_secs
            );
            std::process::exit(1);
        }
        for (j, c) in pub_clients.iter().enumerate() {
            c.publish(a.subject.clone(), encode(j as u32, PROBE_SEQ, 0, 0)).await.ok();
            c.flush().await.ok();
        }
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "warm-up done: {} probe rounds, {:.0} ms",
        probes,
        wu_start.elapsed().as_secs_f64() * 1e3
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // let stray probes drain

    // measured window starts
    let pid_s: Vec<String> = a.pids.iter().map(|p| p.to_string()).collect();
    let srv_cpu0: Vec<u64> = pid_s.iter().map(|p| cpu_ticks(p)).collect();
    let self_cpu0 = cpu_ticks("self");
    let mach0 = machine_ticks();
    let sc0: Vec<Option<u64>> = a.monitors.iter().map(|m| varz_field(m, "slow_consumers")).collect();
    let ev_sc0 = ev.slow_consumer.load(Relaxed);
    let wall0 = Instant::now();

    let start_us = sh.now_us() + 5_000;
    let mut pub_tasks = Vec::new();
    for (j, c) in pub_clients.iter().enumerate() {
        pub_tasks.push(tokio::spawn(run_pub(j, c.clone(), sh.clone(), a.clone(), start_us)));
    }

    let expected_total = a.subs as u64 * a.pubs as u64 * a.msgs;
    let mut last_total = 0u64;
    let mut last_progress = Instant::now();
    let mut last_report = Instant::now();
    let mut stalled = false;
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t = sh.total_recv();
        if t >= expected_total {
            break;
        }
        if t != last_total {
            last_total = t;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(a.stall_secs) {
            stalled = true;
            eprintln!("no progress for {}s: stopping with {t}/{expected_total} unique deliveries", a.stall_secs);
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "progress: {t}/{expected_total} deliveries, sent {}",
                sh.sent.load(Relaxed)
            );
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let srv_cpu1: Vec<u64> = pid_s.iter().map(|p| cpu_ticks(p)).collect();
    let self_cpu1 = cpu_ticks("self");
    let mach1 = machine_ticks();
    let ev_sc1 = ev.slow_consumer.load(Relaxed);
    let sc1: Vec<Option<u64>> = a.monitors.iter().map(|m| varz_field(m, "slow_consumers")).collect();

    sh.stop.store(true, Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await; // late duplicates, if any
    stop_tx.send(true).ok();
    let mut pubs_r = Vec::new();
    for t in pub_tasks {
        pubs_r.push(t.await.expect("pub task"));
    }
    let mut subs_r = Vec::new();
    for t in sub_tasks {
        subs_r.push(t.await.expect("sub task"));
    }

    // ---- report ----
    let first_send = pubs_r.iter().map(|r| r.first_send_us).min().unwrap_or(0);
    let last_send = pubs_r.iter().map(|r| r.last_send_us).max().unwrap_or(0);
    let last_recv = subs_r.iter().map(|r| r.last_recv_us).max().unwrap_or(0);
    let sent: u64 = pubs_r.iter().map(|r| r.sent).sum();
    let pub_errors: u64 = pubs_r.iter().map(|r| r.errors).sum();
    let mut lat: Vec<u32> = Vec::new();
    let mut lat_due: Vec<u32> = Vec::new();
    let (mut missing, mut dup, mut ooo, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut bad_pairs = Vec::new();
    for (i, r) in subs_r.iter().enumerate() {
        lat.extend_from_slice(&r.lat_us);
        lat_due.extend_from_slice(&r.lat_due_us);
        bad += r.bad;
        for (j, c) in r.counts.iter().enumerate() {
            let mi = c.iter().filter(|&&x| x == 0).count() as u64;
            let du: u64 = c.iter().filter(|&&x| x > 1).map(|&x| x as u64 - 1).sum();
            let oo = r.ooo[j];
            missing += mi;
            dup += du;
            ooo += oo;
            if mi + du + oo > 0 {
                bad_pairs.push((i, j, mi, du, oo));
            }
        }
    }
    let deliveries = lat.len() as u64;
    lat.sort_unstable();
    lat_due.sort_unstable();
    let dur_s = last_recv.saturating_sub(first_send) as f64 / 1e6;
    let send_dur_s = last_send.saturating_sub(first_send) as f64 / 1e6;
    let tck = a.clk_tck;
    let srv_cpu: Vec<f64> = srv_cpu0
        .iter()
        .zip(&srv_cpu1)
        .map(|(b, e)| (e - b) as f64 / tck)
        .collect();
    let srv_cpu_total: f64 = srv_cpu.iter().sum();
    let self_cpu = (self_cpu1 - self_cpu0) as f64 / tck;
    let per_del = |cpu_s: f64| {
        if deliveries == 0 { f64::NAN } else { cpu_s * 1e6 / deliveries as f64 }
    };
    let sc_delta: Vec<String> = sc0
        .iter()
        .zip(&sc1)
        .map(|(b, e)| match (b, e) {
            (Some(b), Some(e)) => (e - b).to_string(),
            _ => "?".into(),
        })
        .collect();

    println!("=== NATS fan-out: S={} P={} M={} mode: {} ===", a.subs, a.pubs, a.msgs, mode);
    println!("published          : {sent} (errors {pub_errors}) in {send_dur_s:.3}s = {:.0} msg/s", sent as f64 / send_dur_s.max(1e-9));
    println!("deliveries         : {deliveries} of {expected_total} expected{}", if stalled { "  (STALLED)" } else { "" });
    println!("first send->last delivery: {dur_s:.3}s  -> {:.0} deliveries/s", deliveries as f64 / dur_s.max(1e-9));
    println!(
        "latency send->recv ms: p50 {:.3}  p99 {:.3}  max {:.3}",
        pct(&lat, 50.0), pct(&lat, 99.0), pct(&lat, 100.0)
    );
    if a.rate.is_some() {
        println!(
            "latency due->recv ms : p50 {:.3}  p99 {:.3}  max {:.3}  (from scheduled time)",
            pct(&lat_due, 50.0), pct(&lat_due, 99.0), pct(&lat_due, 100.0)
        );
        let max_late = pubs_r.iter().map(|r| r.max_late_us).max().unwrap_or(0);
        let sum_late: u64 = pubs_r.iter().map(|r| r.sum_late_us).sum();
        println!(
            "send lateness vs schedule: mean {:.3} ms, max {:.3} ms",
            sum_late as f64 / sent.max(1) as f64 / 1e3,
            max_late as f64 / 1e3
        );
    }
    println!("missing {missing}  duplicate {dup}  out-of-order {ooo}  malformed {bad}  (summed over (subscriber,publisher) pairs; {} pairs affected)", bad_pairs.len());
    for (i, j, mi, du, oo) in bad_pairs.iter().take(10) {
        println!("  sub {i} pub {j}: missing {mi} dup {du} ooo {oo}");
    }
    println!(
        "slow consumers     : client-side events {}  server /varz slow_consumers delta per server [{}]",
        ev_sc1 - ev_sc0,
        sc_delta.join(",")
    );
    println!(
        "connection events  : disconnected {} connected {} server_error {} client_error {} other {}",
        ev.disconnected.load(Relaxed),
        ev.connected.load(Relaxed),
        ev.server_error.load(Relaxed),
        ev.client_error.load(Relaxed),
        ev.other.load(Relaxed)
    );
    println!(
        "server CPU         : {:.2}s total [{}] over {wall:.2}s wall = {:.2} us/delivery",
        srv_cpu_total,
        srv_cpu.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(","),
        per_del(srv_cpu_total)
    );
    println!("bench CPU          : {self_cpu:.2}s = {:.2} us/delivery", per_del(self_cpu));
    let mach_busy = (mach1.0 - mach0.0) as f64 / tck;
    let other = mach_busy - srv_cpu_total - self_cpu;
    println!(
        "machine CPU        : {mach_busy:.2}s busy over {wall:.2}s wall ({:.2} cores busy); other processes ~{other:.2}s ({:.2} cores){}",
        mach_busy / wall,
        other / wall,
        if other / wall > 0.1 { "  WARNING: machine not quiet" } else { "" }
    );
    println!(
        "server VmHWM       : [{}]",
        pid_s.iter().map(|p| status_field(p, "VmHWM:")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "RESULT S={} P={} M={} rate={} deliv={} deliv_per_s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} missing={} dup={} ooo={} sc_client={} sc_server={} srv_us_per_deliv={:.2} bench_us_per_deliv={:.2} stalled={}",
        a.subs, a.pubs, a.msgs,
        a.rate.map(|r| r.to_string()).unwrap_or_else(|| "full".into()),
        deliveries, deliveries as f64 / dur_s.max(1e-9),
        pct(&lat, 50.0), pct(&lat, 99.0), pct(&lat, 100.0),
        missing, dup, ooo, ev_sc1 - ev_sc0, sc_delta.join("/"),
        per_del(srv_cpu_total), per_del(self_cpu), stalled
    );
    println!("RESULT_ENV busy_cores={:.2} other_cores={:.2}", mach_busy / wall, other / wall);
    drop(sub_clients);
    drop(pub_clients);
    std::process::exit(if stalled || missing > 0 { 3 } else { 0 });
}
