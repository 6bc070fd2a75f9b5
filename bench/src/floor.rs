//! `chitty-bench floor-server`: the least a chat cluster built on Chitty's
//! stack (tonic over hyper and h2, on tokio) does for the bench's load, to
//! tell how much of a node's CPU per delivery is the stack's and how much
//! is Chitty's.
//!
//! A participant's Join gets a `Welcome` and every event after it; a
//! Publish is stamped with a Lamport time, queued for every session and
//! answered at once. Nothing is logged, checked, remembered for replay,
//! deduplicated or acknowledged between nodes; an event carries what a
//! Chitty message carries to participants (its id, Lamport time, kind, the
//! participant's name and id, the text and the publish id), so that as
//! many bytes reach each reader. An event is encoded once and a session's
//! frame is the encodings of whatever events are queued for it behind a
//! header ([`chitty::wire::EncodedFrame`], as on a node), written by tonic's
//! own Join stream encoder, on connections that gather small writes as a
//! node's do ([`chitty::server::Gathering`]).
//!
//! Several floor servers form a full mesh through the same service: a
//! server started with `--boot ADDR` joins ADDR's room as the participant
//! `peer:<its own address>`, and a server a peer joined joins back. A peer
//! session gets the events of its server's own participants, and the peer
//! that reads them hands them to its own participants only; the "joined" of
//! a peer goes to the other peers, which join it too.
//!
//! It is a measuring point, not a chat server: `chitty-bench --floor` runs a
//! load on it, and `chitty-bench` the same load on Chitty nodes.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::join_frame::Frame;
use chitty::proto::server::chitty_chat_server::{ChittyChat, ChittyChatServer};
use chitty::proto::{
    Event, EventId, EventKind, JoinFrame, JoinRequest, LeaveReply, LeaveRequest,
    ListParticipantsReply, ListParticipantsRequest, ListServersReply, ListServersRequest, NodeId,
    Participant, PublishOutcome, PublishReply, PublishRequest, ServerInfo, ServerList, StatusReply,
    StatusRequest, Welcome,
};
use chitty::wire::{EncodedFrame, event_field};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Events queued for one session; a session that falls this far behind is
/// dropped (its stream ends).
const SESSION_QUEUE: usize = 8192;
/// Most events in one frame.
const BATCH: usize = 256;
/// The name prefix of a peer server's session.
const PEER: &str = "peer:";

/// Runs the floor server on `args`: `--listen ADDR` and `--boot ADDR`;
/// anything else a Chitty node takes is ignored, so that the bench starts
/// it as it starts a node.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let boot = flag("--boot");
    // The runtime a node runs on by default.
    let runtime = match crate::chitty_main::runtime(chitty::cli::DEFAULT_THREADS) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(&listen, boot)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(listen: &str, boot: Option<String>) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let floor = Floor {
        room: Arc::new(Mutex::new(Room::new())),
        addr: addr.to_string(),
    };
    if let Some(boot) = boot {
        floor.connect(boot);
    }
    // The line the bench waits for, as a Chitty node prints it.
    println!("chitty server listening on {addr}");
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.map(|io| {
            let _ = io.set_nodelay(true);
            chitty::server::Gathering::new(io)
        })
    });
    tonic::transport::Server::builder()
        .add_service(ChittyChatServer::new(floor))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| e.to_string())
}

#[derive(Clone)]
struct Floor {
    room: Arc<Mutex<Room>>,
    addr: String,
}

struct Room {
    /// This server, as the origin of its events: an id and generation of
    /// the sizes a Chitty node's have.
    node: NodeId,
    clock: u64,
    seq: u64,
    /// Sessions by token.
    sessions: HashMap<String, Member>,
    /// Peers this server joined (or is joining), by address.
    joined: HashSet<String>,
    /// Peers whose Welcome came back: the servers it lists besides itself.
    reached: Vec<ServerInfo>,
}

struct Member {
    id: String,
    name: String,
    peer: bool,
    /// Encoded events, as `EventBatch.events` fields.
    tx: mpsc::Sender<Bytes>,
}

/// Whom an event is for.
#[derive(Clone, Copy, PartialEq)]
enum Audience {
    Everyone,
    Participants,
    Peers,
}

impl Room {
    fn new() -> Self {
        Self {
            node: NodeId {
                id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
                generation: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_millis() as u64),
            },
            clock: 0,
            seq: 0,
            sessions: HashMap::new(),
            joined: HashSet::new(),
            reached: Vec::new(),
        }
    }

    fn stamp(&mut self, lamport: u64) -> u64 {
        self.clock = self.clock.max(lamport) + 1;
        self.clock
    }

    /// Queues an encoded event for `audience`; drops sessions whose queue is
    /// full.
    fn send(&mut self, field: &Bytes, audience: Audience) {
        self.sessions.retain(|_, member| {
            let wanted = match audience {
                Audience::Everyone => true,
                Audience::Participants => !member.peer,
                Audience::Peers => member.peer,
            };
            !wanted || member.tx.try_send(field.clone()).is_ok()
        });
    }

    /// Stamps and queues a new event of this server's.
    fn broadcast(
        &mut self,
        lamport: u64,
        kind: EventKind,
        who: Who<'_>,
        text: String,
        publish_id: &str,
        audience: Audience,
    ) -> EventId {
        self.seq += 1;
        let id = EventId {
            origin: Some(self.node.clone()),
            seq: self.seq,
        };
        let field = event_field(&Event {
            id: Some(id.clone()),
            lamport,
            kind: kind as i32,
            participant_name: who.name.to_string(),
            participant_id: who.id.to_string(),
            text,
            publish_id: publish_id.to_string(),
            deps: Vec::new(),
        });
        self.send(&field, audience);
        id
    }

    fn publish(&mut self, req: PublishRequest) -> Result<PublishReply, Status> {
        let Some((name, id)) = self
            .sessions
            .get(&req.session_token)
            .map(|m| (m.name.clone(), m.id.clone()))
        else {
            return Err(Status::unauthenticated("no live session"));
        };
        let lamport = self.stamp(req.lamport);
        let who = Who {
            name: &name,
            id: &id,
        };
        let id = self.broadcast(
            lamport,
            EventKind::Message,
            who,
            req.text,
            &req.publish_id,
            Audience::Everyone,
        );
        Ok(PublishReply {
            lamport,
            id: Some(id),
            duplicate: false,
        })
    }
}

/// The participant an event is about.
#[derive(Clone, Copy)]
struct Who<'a> {
    name: &'a str,
    id: &'a str,
}

impl Floor {
    fn room(&self) -> std::sync::MutexGuard<'_, Room> {
        self.room.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn servers(&self) -> ServerList {
        let room = self.room();
        let me = ServerInfo {
            node: Some(room.node.clone()),
            addr: self.addr.clone(),
        };
        ServerList {
            servers: std::iter::once(me)
                .chain(room.reached.iter().cloned())
                .collect(),
            unreachable: Vec::new(),
        }
    }

    /// Joins the server at `addr` as a peer, unless this one has already,
    /// and hands what its participants publish to this server's.
    fn connect(&self, addr: String) {
        if addr == self.addr || !self.room().joined.insert(addr.clone()) {
            return;
        }
        let floor = self.clone();
        tokio::spawn(async move {
            if let Err(e) = floor.relay_from(&addr).await {
                eprintln!("floor: the link from {addr} ended: {e}");
            }
        });
    }

    async fn relay_from(&self, addr: &str) -> Result<(), String> {
        let mut client = ChittyChatClient::new(
            chitty::client::connect_channel(addr)
                .await
                .map_err(|e| e.to_string())?,
        );
        let mut frames = client
            .join(JoinRequest {
                name: format!("{PEER}{}", self.addr),
                ..JoinRequest::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        while let Some(frame) = frames.message().await.map_err(|e| e.to_string())? {
            match frame.frame {
                Some(Frame::Welcome(welcome)) => self.room().reached.push(ServerInfo {
                    node: welcome.node,
                    addr: addr.to_string(),
                }),
                Some(Frame::Events(batch)) => {
                    let mut room = self.room();
                    for event in batch.events {
                        match event.participant_name.strip_prefix(PEER) {
                            Some(peer) if event.kind() == EventKind::Joined => {
                                let peer = peer.to_string();
                                drop(room);
                                self.connect(peer);
                                room = self.room();
                            }
                            Some(_) => {}
                            None => {
                                room.stamp(event.lamport);
                                room.send(&event_field(&event), Audience::Participants);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A session's Join stream: the Welcome, then whatever events are queued
/// when it is polled, as one frame.
pub struct Batches {
    welcome: Option<EncodedFrame>,
    rx: mpsc::Receiver<Bytes>,
}

impl Stream for Batches {
    type Item = Result<EncodedFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(welcome) = self.welcome.take() {
            return Poll::Ready(Some(Ok(welcome)));
        }
        let mut events = Vec::new();
        match self.rx.poll_recv_many(cx, &mut events, BATCH) {
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(Ok(EncodedFrame::events(events)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

type PublishOutcomes = Pin<Box<dyn Stream<Item = Result<PublishOutcome, Status>> + Send>>;

#[tonic::async_trait]
impl ChittyChat for Floor {
    type JoinStream = Batches;
    type PublishStreamStream = PublishOutcomes;

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<Self::JoinStream>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("a name is needed"));
        }
        // Before taking the room: the list takes it too.
        let servers = self.servers();
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let peer = req.name.strip_prefix(PEER).map(str::to_string);
        let mut room = self.room();
        if room.sessions.values().any(|m| m.name == req.name) {
            return Err(Status::already_exists("the name is taken"));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let welcome = EncodedFrame::message(&JoinFrame {
            frame: Some(Frame::Welcome(Welcome {
                participant_id: id.clone(),
                session_token: token.clone(),
                node: Some(room.node.clone()),
                servers: Some(servers),
                ..Welcome::default()
            })),
        });
        room.sessions.insert(
            token,
            Member {
                id: id.clone(),
                name: req.name.clone(),
                peer: peer.is_some(),
                tx,
            },
        );
        let lamport = room.stamp(req.lamport);
        let text = format!(
            "Participant {} joined Chitty-Chat at Lamport time {lamport}",
            req.name
        );
        let audience = match peer {
            Some(_) => Audience::Peers,
            None => Audience::Everyone,
        };
        let who = Who {
            name: &req.name,
            id: &id,
        };
        room.broadcast(lamport, EventKind::Joined, who, text, "", audience);
        drop(room);
        if let Some(peer) = peer {
            self.connect(peer);
        }
        Ok(Response::new(Batches {
            welcome: Some(welcome),
            rx,
        }))
    }

    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        self.room().publish(req.into_inner()).map(Response::new)
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut requests = req.into_inner();
        let room = self.room.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                let published = room
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .publish(req);
                let outcome = match published {
                    Ok(reply) => PublishOutcome {
                        reply: Some(reply),
                        ..PublishOutcome::default()
                    },
                    Err(status) => chitty::service::refused(status),
                };
                if tx.send(Ok(outcome)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let req = req.into_inner();
        let mut room = self.room();
        let Some(member) = room.sessions.remove(&req.session_token) else {
            return Err(Status::unauthenticated("no live session"));
        };
        let lamport = room.stamp(req.lamport);
        let text = format!(
            "Participant {} left Chitty-Chat at Lamport time {lamport}",
            member.name
        );
        let who = Who {
            name: &member.name,
            id: &member.id,
        };
        room.broadcast(lamport, EventKind::Left, who, text, "", Audience::Everyone);
        Ok(Response::new(LeaveReply { lamport }))
    }

    async fn list_participants(
        &self,
        _req: Request<ListParticipantsRequest>,
    ) -> Result<Response<ListParticipantsReply>, Status> {
        let participants = self
            .room()
            .sessions
            .values()
            .filter(|m| !m.peer)
            .map(|m| Participant {
                id: m.id.clone(),
                name: m.name.clone(),
                ..Participant::default()
            })
            .collect();
        Ok(Response::new(ListParticipantsReply { participants }))
    }

    async fn list_servers(
        &self,
        _req: Request<ListServersRequest>,
    ) -> Result<Response<ListServersReply>, Status> {
        Ok(Response::new(ListServersReply {
            servers: Some(self.servers()),
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Err(Status::unimplemented("the floor server has no status"))
    }
}
