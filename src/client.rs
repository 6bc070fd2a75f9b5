//! The client library: connect, join, publish, leave, and receive events with
//! the participant's Lamport clock applied.
//!
//! ```no_run
//! # async fn demo() -> chitty::error::Result<()> {
//! let (session, mut events) = chitty::client::join("127.0.0.1:50051", "Alice").await?;
//! session.publish("hello").await?;
//! while let Some(item) = events.next().await? {
//!     println!("{}", item);
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::core::LamportClock;
use crate::diagram::{self, Call, Dir, Record, Who};
use crate::error::{Error, Result};
use crate::proto::chitty_chat_client::ChittyChatClient;
use crate::proto::{
    Event, EventKind, Gap, JoinFrame, JoinRequest, LeaveRequest, NodeId, PublishOutcome,
    PublishReply, PublishRequest, ServerList, Welcome, join_frame,
};
use crate::tls::TlsSettings;

/// How long to wait for a TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call may take before it is treated as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 ping interval and the wait for its answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to a node at `addr` (`host:port` or a URL), without TLS.
pub async fn connect(addr: &str) -> Result<ChittyChatClient<Channel>> {
    connect_with(addr, None).await
}

/// Connects to a node at `addr`, over TLS with `tls`: the node's
/// certificate must be signed by its CA and valid for `addr`.
pub async fn connect_with(
    addr: &str,
    tls: Option<&TlsSettings>,
) -> Result<ChittyChatClient<Channel>> {
    connect_channel_with(addr, tls).await.map(|channel| {
        // Requests are checked against the node's limit before they are
        // sent (`limits::check_request`), with a clearer error than tonic's.
        ChittyChatClient::new(channel).max_decoding_message_size(crate::limits::CLIENT_MAX_RESPONSE)
    })
}

/// The connection [`connect`] makes, for callers that issue calls their own
/// way (the benchmark's readers).
pub async fn connect_channel(addr: &str) -> Result<Channel> {
    connect_channel_with(addr, None).await
}

/// The connection [`connect_with`] makes.
pub async fn connect_channel_with(addr: &str, tls: Option<&TlsSettings>) -> Result<Channel> {
    let connect_err = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let endpoint = crate::tls::endpoint(addr, tls).map_err(connect_err)?;
    // No whole-request timeout here: it would also cut the endless Join
    // stream. Unary calls are bounded one by one instead. HTTP/2 keepalive
    // notices a node that stopped answering (hung or unplugged) within
    // KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT (5 s): tighter, and a busy
    // machine's scheduling delays start cutting healthy connections.
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(crate::http2::STREAM_WINDOW)
        .initial_connection_window_size(crate::http2::CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| connect_err(crate::tls::explain_dial_error(addr, tls, &e)))?;
    Ok(channel)
}

/// The first frame of a Join stream, which must be the `Welcome`.
pub(crate) fn expect_welcome(first: Option<JoinFrame>) -> Result<Welcome> {
    match first {
        Some(JoinFrame {
            frame: Some(join_frame::Frame::Welcome(w)),
        }) => Ok(w),
        other => Err(Error::Protocol(format!(
            "expected a Welcome frame first, got {other:?}"
        ))),
    }
}

/// Runs a unary call with [`CALL_TIMEOUT`]. A call whose connection broke
/// under it fails with UNAVAILABLE, as one that found no connection does.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("call timed out")))
        .map_err(unavailable_if_transport_failed)
}

/// Tonic reports a connection that closed while a request was on it as
/// UNKNOWN "transport error"; for the caller that is the server being
/// unreachable, which is UNAVAILABLE.
fn unavailable_if_transport_failed(status: tonic::Status) -> tonic::Status {
    let from_transport = status.code() == tonic::Code::Unknown
        && std::error::Error::source(&status)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
    if from_transport {
        tonic::Status::unavailable(format!("connection to the server lost: {status}"))
    } else {
        status
    }
}

/// The participant's Lamport clock, shared by the sending and receiving
/// halves, with who the participant is, for the log's diagram records.
#[derive(Debug, Clone, Default)]
pub struct SharedClock(Arc<Mutex<ClockState>>);

#[derive(Debug, Default)]
struct ClockState {
    clock: LamportClock,
    name: String,
    /// Empty until a Welcome told it.
    participant_id: String,
    /// The node the participant talks to, once a Welcome named it.
    node: Option<NodeId>,
    node_addr: String,
}

impl ClockState {
    fn who(&self) -> Who<'_> {
        Who::Participant {
            name: &self.name,
            id: &self.participant_id,
            node: self.node.as_ref(),
            node_addr: &self.node_addr,
        }
    }
}

impl SharedClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn tick(&self) -> u64 {
        self.state().clock.tick()
    }
    pub fn observe(&self, remote: u64) -> u64 {
        self.state().clock.observe(remote)
    }
    pub fn now(&self) -> u64 {
        self.state().clock.now()
    }

    /// Ticks for a request sent by `call` to the node at `node_addr`, and
    /// logs it (see [`crate::diagram`]); returns the time to send.
    pub fn send(&self, call: Call, name: &str, node_addr: &str) -> u64 {
        let mut state = self.state();
        if state.name != name {
            state.name = name.to_string();
        }
        if state.node_addr != node_addr {
            state.node_addr = node_addr.to_string();
            state.node = None;
        }
        let before = state.clock.now();
        let after = state.clock.tick();
        diagram::rpc(
            state.who(),
            Record::new(call, Dir::Sent)
                .carried(after)
                .clock(before, after),
        );
        after
    }

    /// The session a Welcome opened: the participant's id and its node.
    pub fn welcomed(&self, welcome: &Welcome) {
        let mut state = self.state();
        state.participant_id.clone_from(&welcome.participant_id);
        state.node.clone_from(&welcome.node);
    }

    /// Applies the receive rule to `event` and writes it to the log with the
    /// participant's new time (R4).
    pub fn receive(&self, event: Event) -> Received {
        let local = {
            let mut state = self.state();
            let before = state.clock.now();
            let local = state.clock.observe(event.lamport);
            diagram::event(
                state.who(),
                Record::new(Call::Deliver, Dir::Received)
                    .event(&event)
                    .clock(before, local),
            );
            local
        };
        tracing::info!(
            lamport = event.lamport,
            local,
            kind = event.kind().as_str_name(),
            from = %event.participant_name,
            text = %event.text,
            "received broadcast"
        );
        Received::Event { event, local }
    }
}

/// The sending half of a joined participant.
#[derive(Debug, Clone)]
pub struct Session {
    client: ChittyChatClient<Channel>,
    welcome: Welcome,
    name: String,
    clock: SharedClock,
}

/// Joins the chat on the node at `addr` as `name`.
pub async fn join(addr: &str, name: &str) -> Result<(Session, EventStream)> {
    let client = connect(addr).await?;
    join_with(client, name).await
}

/// Joins over an existing connection.
pub async fn join_with(
    mut client: ChittyChatClient<Channel>,
    name: &str,
) -> Result<(Session, EventStream)> {
    let clock = SharedClock::default();
    let lamport = clock.send(Call::Join, name, "");
    let mut stream = client
        .join(JoinRequest {
            name: name.to_string(),
            lamport,
            resume: None,
            rejoin: None,
            recent: 0,
        })
        .await?
        .into_inner();
    let welcome = expect_welcome(stream.message().await?)?;
    clock.welcomed(&welcome);
    let session = Session::from_welcome(client, welcome, name, clock.clone());
    let events = EventStream {
        inner: stream,
        clock,
        pending: VecDeque::new(),
    };
    Ok((session, events))
}

impl Session {
    /// The sending half of a session whose Join stream the caller opened and
    /// read the `Welcome` of itself, with the participant's clock.
    pub fn from_welcome(
        client: ChittyChatClient<Channel>,
        welcome: Welcome,
        name: &str,
        clock: SharedClock,
    ) -> Self {
        Self {
            client,
            welcome,
            name: name.to_string(),
            clock,
        }
    }

    pub fn participant_id(&self) -> &str {
        &self.welcome.participant_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The participant's current Lamport time.
    pub fn lamport(&self) -> u64 {
        self.clock.now()
    }

    /// Publishes a message. Returns the server's reply and the Lamport time
    /// the request was sent at.
    pub async fn publish(&self, text: &str) -> Result<(PublishReply, u64)> {
        let lamport = self.clock.send(Call::Publish, &self.name, "");
        tracing::info!(lamport, "sending Publish");
        let mut client = self.client.clone();
        let request = PublishRequest {
            session_token: self.welcome.session_token.clone(),
            text: text.to_string(),
            lamport,
            publish_id: uuid::Uuid::new_v4().to_string(),
        };
        crate::limits::check_request(&request)?;
        let call = client.publish(request);
        let reply = bounded(call).await?.into_inner();
        Ok((reply, lamport))
    }

    /// Opens a publish stream: messages sent on it are published in order
    /// without waiting for each reply; the outcomes come back, in order, on
    /// the returned stream.
    pub async fn publisher(&self) -> Result<(PublishSender, tonic::Streaming<PublishOutcome>)> {
        let (tx, rx) = mpsc::channel(PUBLISH_WINDOW);
        let replies = self
            .client
            .clone()
            .publish_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let sender = PublishSender {
            tx,
            token: self.welcome.session_token.clone(),
            clock: self.clock.clone(),
        };
        Ok((sender, replies))
    }

    /// Leaves the chat. Returns the timestamp of the "left" event.
    pub async fn leave(&self) -> Result<u64> {
        let lamport = self.clock.send(Call::Leave, &self.name, "");
        tracing::info!(lamport, "sending Leave");
        let mut client = self.client.clone();
        let call = client.leave(LeaveRequest {
            session_token: self.welcome.session_token.clone(),
            lamport,
        });
        Ok(bounded(call).await?.into_inner().lamport)
    }
}

/// Messages a [`PublishSender`] may have queued before it waits.
const PUBLISH_WINDOW: usize = 256;

/// The sending side of a publish stream.
#[derive(Debug, Clone)]
pub struct PublishSender {
    tx: mpsc::Sender<PublishRequest>,
    token: String,
    clock: SharedClock,
}

impl PublishSender {
    /// Queues `text` for publishing; returns the Lamport time of the request.
    pub async fn send(&self, text: &str) -> Result<u64> {
        let lamport = self.clock.tick();
        let request = PublishRequest {
            session_token: self.token.clone(),
            text: text.to_string(),
            lamport,
            publish_id: uuid::Uuid::new_v4().to_string(),
        };
        // Too large, it would end the stream: refused here instead.
        crate::limits::check_request(&request)?;
        self.tx
            .send(request)
            .await
            .map_err(|_| Error::Unavailable("the publish stream has ended".into()))?;
        Ok(lamport)
    }
}

/// The line the client prints before events that arrive late, after a
/// network split.
pub const LATE_LINE: &str = "[delivered after a network split]";
/// The line it prints when live events resume after such a run.
pub const CAUGHT_UP_LINE: &str = "[caught up]";

/// Something the participant received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A broadcast event, with the participant's Lamport time after applying
    /// the receive rule to it.
    Event { event: Event, local: u64 },
    /// Events were missed.
    Gap(Gap),
    /// The cluster's nodes changed (or which of them its node reaches).
    Servers(ServerList),
    /// The events that follow arrive late (`true`: they reached the node
    /// only after a network split healed, and are from before what came
    /// last), or live again (`false`).
    Late(bool),
    /// Who is in the room, after events this participant saw were lost with
    /// their node (see `JoinFrame.room`).
    Room(Vec<crate::proto::Participant>),
    /// Participants announced as left whose departure was lost with a node:
    /// they are here (the failover client's reading of a `Room`).
    StillHere(Vec<String>),
}

impl fmt::Display for Received {
    /// One line as the command-line client prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What came from the cluster is shown escaped: a node of an older
        // version, or a hostile peer, may deliver text with control
        // characters, which must not move the cursor or fake a line.
        use crate::core::validate::escaped;
        match self {
            Received::Event { event, local } => match event.kind() {
                EventKind::Message => write!(
                    f,
                    "[lamport {} | local {}] {}: {}",
                    event.lamport,
                    local,
                    escaped(&event.participant_name),
                    escaped(&event.text)
                ),
                _ => write!(
                    f,
                    "[lamport {} | local {}] {}",
                    event.lamport,
                    local,
                    escaped(&event.text)
                ),
            },
            Received::Gap(gap) => write!(f, "[gap] {}", escaped(&gap.reason)),
            Received::Servers(list) => {
                let addrs: Vec<_> = list.servers.iter().map(|s| s.addr.as_str()).collect();
                write!(f, "[servers] {}", escaped(&addrs.join(", ")))?;
                if !list.unreachable.is_empty() {
                    let addrs: Vec<_> = list.unreachable.iter().map(|s| s.addr.as_str()).collect();
                    write!(f, " (unreachable: {})", escaped(&addrs.join(", ")))?;
                }
                Ok(())
            }
            Received::Late(true) => f.write_str(LATE_LINE),
            Received::Late(false) => f.write_str(CAUGHT_UP_LINE),
            Received::Room(list) => {
                let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
                write!(f, "[room] here: {}", names.join(", "))
            }
            Received::StillHere(names) => write!(
                f,
                "[room] still here, though announced as left by a node lost since: {}",
                names.join(", ")
            ),
        }
    }
}

/// The receiving half: every event of the session, in delivery order.
#[derive(Debug)]
pub struct EventStream {
    inner: tonic::Streaming<JoinFrame>,
    clock: SharedClock,
    pending: VecDeque<Received>,
}

impl EventStream {
    /// The next item; `Ok(None)` when the session ended normally (after a
    /// Leave), `Err` when it was ended by the server or the connection broke.
    pub async fn next(&mut self) -> Result<Option<Received>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let Some(frame) = self.inner.message().await? else {
                return Ok(None);
            };
            match frame.frame {
                Some(join_frame::Frame::Events(batch)) => {
                    for event in batch.events {
                        self.pending.push_back(self.clock.receive(event));
                    }
                }
                Some(join_frame::Frame::Gap(gap)) => self.pending.push_back(Received::Gap(gap)),
                Some(join_frame::Frame::Servers(list)) => {
                    self.pending.push_back(Received::Servers(list))
                }
                Some(join_frame::Frame::Late(run)) => {
                    self.pending.push_back(Received::Late(run.late))
                }
                Some(join_frame::Frame::Room(room)) => {
                    self.pending.push_back(Received::Room(room.participants))
                }
                Some(join_frame::Frame::Welcome(_)) | None => {
                    return Err(Error::Protocol("unexpected frame in session stream".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EventKind;

    /// What a participant's terminal receives for an event whose name and
    /// text carry terminal controls (from an old node, or a hostile peer):
    /// one line, every control shown as an escape.
    #[test]
    fn a_printed_event_cannot_move_the_cursor_or_fake_a_line() {
        let event = Event {
            kind: EventKind::Message as i32,
            lamport: 7,
            participant_name: "Mal\u{202e}lory".into(),
            text: "hi\u{1b}[2K\r\nBob: send me your password\u{8}\u{9b}31m".into(),
            ..Default::default()
        };
        let line = Received::Event { event, local: 8 }.to_string();
        assert_eq!(
            line,
            "[lamport 7 | local 8] Mal\\u{202e}lory: \
             hi\\x1b[2K\\x0d\\x0aBob: send me your password\\x08\\x9b31m"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let joined = Event {
            kind: EventKind::Joined as i32,
            lamport: 2,
            text: "Participant \u{1b}]0;owned\u{7} joined".into(),
            ..Default::default()
        };
        let line = Received::Event {
            event: joined,
            local: 3,
        }
        .to_string();
        assert_eq!(
            line,
            "[lamport 2 | local 3] Participant \\x1b]0;owned\\x07 joined"
        );
    }
}
