//! The same load on a NATS cluster (core NATS, one subject, no JetStream),
//! for comparison on the same machine.
//!
//! It starts `--nodes N` `nats-server` processes on loopback in a full mesh
//! of routes (Debian's `nats-server` package), or uses running ones
//! (`--servers nats://host:port,...`). Every reading participant is a
//! subscriber with a connection of its own, and every publisher has one
//! too, round-robin over the servers. The messages, the pacing, the checks
//! and the figures are the Chitty run's.
//!
//! NATS tells no one when a subscription's interest has reached the other
//! servers, so before the measured window the publishers send probes until
//! every subscriber has seen one from every publisher.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Subscriber};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::load::{Load, MessageSink, Plan, Published};
use crate::measure::run_window;
use crate::receive::{Readers, Reading, Tracker};
use crate::report::Report;
use crate::servers::{ServerProcesses, wait_until};

/// How long the servers may take to form their full mesh.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the probes may take to reach every subscriber.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two rounds of probes.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// After the warm-up, for probes still on their way to arrive.
const PROBES_SETTLE: Duration = Duration::from_millis(300);
/// The largest message NATS takes by default is 1 MiB; a longer text than
/// this says nothing more about fan-out.
const MAX_SIZE: usize = 64 * 1024;
/// The start of a probe's text, followed by the publisher's index.
const PROBE: &[u8] = b"probe ";

/// What to run on NATS.
#[derive(Debug, Clone)]
pub struct Config {
    pub load: Load,
    /// The `nats-server` to start the servers with.
    pub program: PathBuf,
    /// The subject everyone publishes and subscribes to.
    pub subject: String,
}

/// Runs one benchmark. Started servers are killed before it returns, and
/// also if the returned future is dropped.
pub async fn run(config: &Config) -> Result<Report, String> {
    config.load.validate(MAX_SIZE)?;
    let mut cluster = None;
    let (urls, monitors) = if config.load.servers.is_empty() {
        let (started, urls, monitors) = start_cluster(config).await?;
        cluster = Some(started);
        (urls, monitors)
    } else {
        (config.load.servers.clone(), Vec::new())
    };
    let result = measure(config, &urls, &monitors, cluster.as_mut()).await;
    if let Some(c) = cluster.as_mut() {
        let slow = c.log_lines_with("slow consumer");
        if !slow.is_empty() {
            eprintln!("bench: the server logs mention slow consumers:");
            for line in slow.iter().take(5) {
                eprintln!("  {line}");
            }
        }
        c.stop().await;
        if result.is_err() {
            c.keep_logs();
        }
    }
    result
}

/// Loopback ports nobody listens on now.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    // Held together until all are chosen, so that they differ.
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Starts the servers, each routed to all the others, and waits until each
/// has its routes. Returns them, their client URLs and their monitoring
/// addresses.
async fn start_cluster(
    config: &Config,
) -> Result<(ServerProcesses, Vec<String>, Vec<String>), String> {
    let n = config.load.nodes;
    let mut cluster = ServerProcesses::new(config.load.log_dir.as_deref(), "nats")?;
    let ports = free_ports(3 * n)?;
    let (clients, rest) = ports.split_at(n);
    let (routes, monitors) = rest.split_at(n);
    for i in 0..n {
        let mut command = Command::new(&config.program);
        command
            .args(["-a", "127.0.0.1", "--no_advertise"])
            .args(["-p", &clients[i].to_string()])
            .args(["-m", &monitors[i].to_string()])
            .args(["-n", &format!("n{i}")])
            .stdout(Stdio::null());
        if n > 1 {
            let others: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            command
                .args(["--cluster_name", "bench"])
                .args(["-cluster", &format!("nats://127.0.0.1:{}", routes[i])])
                .args(["-routes", &others.join(",")]);
        }
        let mut server = cluster
            .spawn(command, &format!("nats{i}"))
            .map_err(|e| format!("{e} (Debian: apt-get install nats-server)"))?;
        server.addr = format!("127.0.0.1:{}", clients[i]);
        cluster.list.push(server);
    }
    let monitors: Vec<String> = monitors.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let watched = monitors.clone();
    wait_until(&mut cluster, CLUSTER_READY_TIMEOUT, || {
        let monitors = watched.clone();
        async move {
            for monitor in &monitors {
                let routes = monitoring_number(monitor, "/routez", "num_routes").await?;
                if routes + 1 < n as u64 {
                    return Err(format!("{monitor} has {routes} of {} routes", n - 1));
                }
            }
            Ok(())
        }
    })
    .await?;
    let urls = cluster
        .addrs()
        .iter()
        .map(|a| format!("nats://{a}"))
        .collect();
    Ok((cluster, urls, monitors))
}

/// A number from a server's monitoring endpoint (`/varz`, `/routez`).
async fn monitoring_number(monitor: &str, path: &str, field: &str) -> Result<u64, String> {
    let mut stream = tokio::net::TcpStream::connect(monitor)
        .await
        .map_err(|e| format!("{monitor}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {monitor}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{monitor}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{monitor}: {e}"))?;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &response[i + 4..])
        .ok_or_else(|| format!("{monitor}{path}: no HTTP response"))?;
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{monitor}{path}: {e}"))?;
    value[field]
        .as_u64()
        .ok_or_else(|| format!("{monitor}{path}: no {field}"))
}

/// Slow-consumer incidents counted by all the servers so far.
async fn server_slow_consumers(monitors: &[String]) -> Option<u64> {
    let mut total = 0;
    for monitor in monitors {
        total += monitoring_number(monitor, "/varz", "slow_consumers")
            .await
            .ok()?;
    }
    (!monitors.is_empty()).then_some(total)
}

/// What the client library reported on any connection.
#[derive(Debug, Default)]
struct ClientEvents {
    slow_consumer: AtomicU64,
}

fn connect_options(events: &Arc<ClientEvents>) -> ConnectOptions {
    let events = events.clone();
    ConnectOptions::new().event_callback(move |event| {
        let events = events.clone();
        async move {
            match event {
                Event::SlowConsumer(_) => {
                    events.slow_consumer.fetch_add(1, Ordering::Relaxed);
                }
                Event::Connected | Event::Closed => {}
                other => eprintln!("bench: nats: {other}"),
            }
        }
    })
}

/// Reads one subscription until the bench says stop: probes count towards
/// `probed` (once a probe of every publisher arrived), the rest is checked.
async fn read_subscription(
    mut subscription: Subscriber,
    probed: Arc<AtomicUsize>,
    mut reading: Reading,
    mut stop: watch::Receiver<bool>,
) -> Tracker {
    let mut probes_seen = vec![false; reading.plan.publishers];
    let mut probes_missing = reading.plan.publishers;
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let ended = loop {
        let message = tokio::select! {
            biased;
            _ = &mut stopped => break None,
            message = subscription.next() => message,
        };
        let Some(message) = message else {
            break Some("the subscription ended".to_string());
        };
        reading.received_events(1);
        if let Some(publisher) = probe_of(&message.payload) {
            if let Some(seen) = probes_seen.get_mut(publisher)
                && !*seen
            {
                *seen = true;
                probes_missing -= 1;
                if probes_missing == 0 {
                    probed.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        let now_us = reading.plan.now_us();
        if reading.tracker.record(&message.payload, now_us) {
            reading.delivered(1);
        }
    };
    reading.end(ended)
}

/// The publisher a probe's text names.
fn probe_of(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload.strip_prefix(PROBE)?)
        .ok()?
        .parse()
        .ok()
}

/// A publisher's connection.
struct NatsSink {
    client: Client,
    subject: async_nats::Subject,
    plan: Arc<Plan>,
}

impl MessageSink for NatsSink {
    async fn send(&mut self, text: &str) -> Result<(), String> {
        let payload = Bytes::copy_from_slice(text.as_bytes());
        self.client
            .publish(self.subject.clone(), payload)
            .await
            .map_err(|e| e.to_string())
    }

    /// Core NATS acknowledges nothing: done is when the connection has
    /// written everything out.
    async fn finish(self) -> Published {
        let mut out = Published::default();
        if let Err(e) = self.client.flush().await {
            out.failed(e.to_string());
        }
        out.last_ack_us = self.plan.now_us();
        out
    }
}

async fn connect(url: &str, events: &Arc<ClientEvents>) -> Result<Client, String> {
    connect_options(events)
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

async fn measure(
    config: &Config,
    urls: &[String],
    monitors: &[String],
    cluster: Option<&mut ServerProcesses>,
) -> Result<Report, String> {
    let load = &config.load;
    let pids = cluster.as_ref().map(|c| c.pids()).unwrap_or_default();
    let subject = async_nats::Subject::from(config.subject.as_str());
    let events = Arc::new(ClientEvents::default());
    let plan = Arc::new(Plan::new(load));
    let mut readers = Readers::new(plan.clone());
    let probed = Arc::new(AtomicUsize::new(0));
    let mut subscriber_clients = Vec::with_capacity(load.participants);
    for i in 0..load.participants {
        let client = connect(&urls[i % urls.len()], &events).await?;
        let subscription = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        client.flush().await.map_err(|e| e.to_string())?;
        let probed = probed.clone();
        readers.spawn(|reading, stop| read_subscription(subscription, probed, reading, stop));
        subscriber_clients.push(client);
    }
    let mut publisher_clients = Vec::with_capacity(load.publishers);
    for j in 0..load.publishers {
        publisher_clients.push(connect(&urls[j % urls.len()], &events).await?);
    }

    let warm_up = Instant::now();
    while probed.load(Ordering::Relaxed) < load.participants {
        if warm_up.elapsed() > WARM_UP_TIMEOUT {
            return Err(format!(
                "{} of {} subscribers saw a probe of every publisher within {WARM_UP_TIMEOUT:?}",
                probed.load(Ordering::Relaxed),
                load.participants
            ));
        }
        for (j, client) in publisher_clients.iter().enumerate() {
            let probe = [PROBE, j.to_string().as_bytes()].concat();
            let _ = client.publish(subject.clone(), Bytes::from(probe)).await;
            let _ = client.flush().await;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    tokio::time::sleep(PROBES_SETTLE).await;
    if load.progress {
        eprintln!(
            "bench: {} subscribers on {} servers, subscriptions everywhere after {:.0} ms",
            load.participants,
            urls.len(),
            warm_up.elapsed().as_secs_f64() * 1e3
        );
    }

    let sinks: Vec<NatsSink> = publisher_clients
        .iter()
        .map(|client| NatsSink {
            client: client.clone(),
            subject: subject.clone(),
            plan: plan.clone(),
        })
        .collect();
    let slow_before = server_slow_consumers(monitors).await;
    let events_before = events.slow_consumer.load(Ordering::Relaxed);
    let window = run_window(load, sinks, &mut readers, &pids).await?;
    let slow_after = server_slow_consumers(monitors).await;

    let mut report = Report::new("nats", load, urls.len());
    report.measured(&window, &pids);
    report.slow_consumers = slow_after
        .zip(slow_before)
        .map(|(a, b)| a.saturating_sub(b));
    report.slow_consumer_events =
        Some(events.slow_consumer.load(Ordering::Relaxed) - events_before);
    if let Some(c) = cluster {
        c.check_alive()?;
    }
    Ok(report)
}
