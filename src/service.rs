//! The tonic services: translate protobuf to [`Node`] calls and errors to
//! `Status`. No chat logic lives here.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, instrument, warn};

use crate::diagram::Call;
use crate::node::{Node, SessionStream};
use crate::proto::server::chitty_chat_server::ChittyChat;
use crate::proto::server::server_mesh_server::ServerMesh;
use crate::proto::{
    JoinRequest, LeaveReply, LeaveRequest, ListParticipantsReply, ListParticipantsRequest,
    ListServersReply, ListServersRequest, PublishOutcome, PublishReply, PublishRequest, RelayFrame,
    ServerJoinReply, ServerJoinRequest, UpdateServersReply, UpdateServersRequest, relay_frame,
};

/// The client-facing `ChittyChat` service.
#[derive(Debug, Clone)]
pub struct ChatService {
    node: Node,
}

impl ChatService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    /// Opens the session a Join call asks for: a new participant, or a
    /// resumed one. [`crate::edge::ChatEdge`] calls this and writes the
    /// stream itself.
    #[instrument(name = "Join", skip_all, fields(name = %req.name, lamport = req.lamport))]
    pub async fn open(&self, req: JoinRequest) -> Result<SessionStream, Status> {
        let opened = match req.resume {
            Some(resume) => self.node.resume(resume, req.lamport).await,
            None => self
                .node
                .join(&req.name, req.lamport, req.rejoin, req.recent as usize),
        };
        opened.map_err(|e| refuse("Join", e))
    }
}

/// Publishes accepted on one publish stream and not yet answered (waiting for
/// a peer to hold them). When full, the stream stops reading requests.
const PUBLISH_STREAM_QUEUE: usize = 1024;

/// Most messages one publish stream publishes in one turn: those it has
/// already received, published under one hold of the node's lock so that
/// they reach the peers as one batch.
const PUBLISH_TURN: usize = 16;

/// `future`'s output if it is ready at once, without waiting.
async fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        output = future => Some(output),
        () = std::future::ready(()) => None,
    }
}

/// Serves one publish stream: each request is published at once, in order;
/// its outcome is sent once a peer holds the event (replication is
/// cumulative, so waiting in order costs nothing extra).
///
/// A request that cannot be decoded (a string field that is not UTF-8) ends
/// the stream with its `INVALID_ARGUMENT`, one over the size limit with its
/// `RESOURCE_EXHAUSTED`, once every request before it was answered: those were published; nothing after it is read (the message
/// boundaries after a malformed message cannot be trusted).
async fn serve_publish_stream(
    node: Node,
    mut requests: tonic::Streaming<PublishRequest>,
    replies: mpsc::Sender<Result<PublishOutcome, Status>>,
) {
    let mut shutdown = node.shutdown_signal();
    let (waiting_tx, mut waiting) = mpsc::channel(PUBLISH_STREAM_QUEUE);
    let answering = {
        let replies = replies.clone();
        async move {
            while let Some(outcome) = waiting.recv().await {
                let outcome = match outcome {
                    Pending::Publish(outcome) => match outcome.await {
                        Ok(reply) => Ok(PublishOutcome {
                            reply: Some(reply),
                            ..Default::default()
                        }),
                        Err(e) => Ok(refused(refuse("PublishStream", e))),
                    },
                    Pending::End(status) => Err(status),
                };
                let end = outcome.is_err();
                if replies.send(outcome).await.is_err() || end {
                    return;
                }
            }
        }
    };
    let reading = async move {
        let mut turn: Vec<PublishRequest> = Vec::with_capacity(PUBLISH_TURN);
        loop {
            let request = tokio::select! {
                _ = shutdown.changed() => {
                    let _ = replies.send(Err(Status::unavailable("node is shutting down"))).await;
                    return;
                }
                request = requests.message() => request,
            };
            // What else the stream already holds joins this turn, up to
            // PUBLISH_TURN messages; anything that would wait ends it.
            let mut next = Some(request);
            let mut end = None;
            while let Some(request) = next.take() {
                match request {
                    Ok(Some(req)) => turn.push(req),
                    Ok(None) => end = Some(None),
                    // A request too large, or one that cannot be decoded.
                    Err(status) => {
                        let status = crate::limits::oversize(status);
                        warn!(call = "PublishStream", error = %status.message(), "refused");
                        end = Some(Some(status));
                    }
                }
                if end.is_none() && turn.len() < PUBLISH_TURN {
                    next = ready_now(requests.message()).await;
                }
            }
            if !turn.is_empty() {
                for outcome in node.publish_all(Call::PublishStream, &turn) {
                    if waiting_tx.send(Pending::Publish(outcome)).await.is_err() {
                        return;
                    }
                }
                turn.clear();
            }
            match end {
                Some(Some(status)) => {
                    let _ = waiting_tx.send(Pending::End(status)).await;
                    return;
                }
                Some(None) => return,
                None => {}
            }
            // Turns: every publish stream of the node (and every unary
            // Publish) gets its turn between two turns of a stream that has
            // thousands of messages buffered, rather than after them.
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(reading, answering);
}

/// What a publish stream answers next, in request order.
enum Pending<F> {
    /// A publish's outcome, once it is known.
    Publish(F),
    /// The stream ends with this status.
    End(Status),
}

/// A `PublishStream` outcome for a message refused with `status`.
pub fn refused(status: Status) -> PublishOutcome {
    PublishOutcome {
        reply: None,
        error_code: status.code() as i32,
        error_message: status.message().to_string(),
    }
}

/// Logs a refused call and converts the error at the edge.
fn refuse(call: &str, err: crate::Error) -> Status {
    warn!(call, error = %err, "refused");
    err.into()
}

#[tonic::async_trait]
impl ChittyChat for ChatService {
    type JoinStream = SessionStream;
    type PublishStreamStream = ReceiverStream<Result<PublishOutcome, Status>>;

    /// The same call through tonic's own encoder, for this service mounted
    /// without [`crate::edge::ChatEdge`].
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<SessionStream>, Status> {
        self.open(req.into_inner()).await.map(Response::new)
    }

    #[instrument(name = "Publish", skip_all, fields(lamport = req.get_ref().lamport))]
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let req = req.into_inner();
        // Answered once another node holds the event.
        let reply = self
            .node
            .publish(&req.session_token, &req.text, req.lamport, &req.publish_id)
            .await
            .map_err(|e| refuse("Publish", e))?;
        Ok(Response::new(reply))
    }

    #[instrument(name = "PublishStream", skip_all)]
    async fn publish_stream(
        &self,
        req: Request<tonic::Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (tx, rx) = mpsc::channel(PUBLISH_STREAM_QUEUE);
        self.node.spawn_owned(serve_publish_stream(
            self.node.clone(),
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[instrument(name = "Leave", skip_all, fields(lamport = req.get_ref().lamport))]
    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let req = req.into_inner();
        self.node
            .leave(&req.session_token, req.lamport)
            .map(|lamport| Response::new(LeaveReply { lamport }))
            .map_err(|e| refuse("Leave", e))
    }

    async fn list_participants(
        &self,
        _req: Request<ListParticipantsRequest>,
    ) -> Result<Response<ListParticipantsReply>, Status> {
        let participants = self.node.participants();
        info!(count = participants.len(), "ListParticipants");
        Ok(Response::new(ListParticipantsReply { participants }))
    }

    async fn list_servers(
        &self,
        _req: Request<ListServersRequest>,
    ) -> Result<Response<ListServersReply>, Status> {
        info!("ListServers");
        Ok(Response::new(ListServersReply {
            servers: Some(self.node.server_list()),
        }))
    }

    async fn status(
        &self,
        _req: Request<crate::proto::StatusRequest>,
    ) -> Result<Response<crate::proto::StatusReply>, Status> {
        debug!("Status");
        Ok(Response::new(self.node.status()))
    }
}

/// The peer-facing `ServerMesh` service. The cluster secret is checked by
/// [`crate::mesh::CheckMeshCaller`] before any of these run.
#[derive(Debug, Clone)]
pub struct MeshService {
    node: Node,
}

impl MeshService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl ServerMesh for MeshService {
    /// Acknowledgements are cumulative: the stream carries the latest one
    /// (`mesh::ack_channel`), so a slow reader skips stale ones and never
    /// misses the newest.
    type RelayStream = crate::mesh::AckStream;

    #[instrument(name = "ServerJoin", skip_all)]
    async fn server_join(
        &self,
        req: Request<ServerJoinRequest>,
    ) -> Result<Response<ServerJoinReply>, Status> {
        let member = req
            .into_inner()
            .member
            .ok_or_else(|| Status::invalid_argument("ServerJoin without a member"))?;
        self.node.admit(member).map(Response::new)
    }

    #[instrument(name = "UpdateServers", skip_all)]
    async fn update_servers(
        &self,
        req: Request<UpdateServersRequest>,
    ) -> Result<Response<UpdateServersReply>, Status> {
        let members = self.node.merge_members(&req.into_inner().members);
        debug!(members = members.len(), "UpdateServers");
        self.node.log_mesh_call(
            Call::UpdateServers,
            crate::diagram::Dir::Received,
            None,
            None,
        );
        Ok(Response::new(UpdateServersReply { members }))
    }

    #[instrument(name = "Relay", skip_all)]
    async fn relay(
        &self,
        req: Request<tonic::Streaming<RelayFrame>>,
    ) -> Result<Response<Self::RelayStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(RelayFrame {
                frame: Some(relay_frame::Frame::Hello(member)),
            }) => member,
            _ => return Err(Status::invalid_argument("a relay link starts with hello")),
        };
        let opened = self.node.relay_hello(hello)?;
        let rx = opened.first;
        self.node.spawn_owned(crate::mesh::serve_inbound(
            self.node.clone(),
            opened.peer,
            opened.link,
            inbound,
            opened.acks,
        ));
        Ok(Response::new(rx))
    }
}
