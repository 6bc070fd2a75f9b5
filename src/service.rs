//! The tonic services: translate protobuf to [`Node`] calls and errors to
//! `Status`. No chat logic lives here.

use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::node::{Node, SessionStream};
use crate::proto::chitty_chat_server::ChittyChat;
use crate::proto::server_mesh_server::ServerMesh;
use crate::proto::{
    JoinRequest, LeaveReply, LeaveRequest, ListParticipantsReply, ListParticipantsRequest,
    ListServersReply, ListServersRequest, PublishReply, PublishRequest, RelayAck, RelayFrame,
    ServerJoinReply, ServerJoinRequest, UpdateServersReply, UpdateServersRequest,
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
}

/// Logs a refused call and converts the error at the edge.
fn refuse(call: &str, err: crate::Error) -> Status {
    warn!(call, error = %err, "refused");
    err.into()
}

#[tonic::async_trait]
impl ChittyChat for ChatService {
    type JoinStream = SessionStream;

    #[instrument(name = "Join", skip_all, fields(name = %req.get_ref().name, lamport = req.get_ref().lamport))]
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<SessionStream>, Status> {
        let req = req.into_inner();
        if req.resume.is_some() {
            return Err(Status::unimplemented("session resume is not supported yet"));
        }
        self.node
            .join(&req.name, req.lamport)
            .map(Response::new)
            .map_err(|e| refuse("Join", e))
    }

    #[instrument(name = "Publish", skip_all, fields(lamport = req.get_ref().lamport))]
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<PublishReply>, Status> {
        let req = req.into_inner();
        self.node
            .publish(&req.session_token, &req.text, req.lamport, &req.publish_id)
            .map(Response::new)
            .map_err(|e| refuse("Publish", e))
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
}

/// The peer-facing `ServerMesh` service.
#[derive(Debug, Clone)]
pub struct MeshService {
    #[allow(dead_code)]
    node: Node,
}

impl MeshService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl ServerMesh for MeshService {
    type RelayStream = tokio_stream::Empty<Result<RelayAck, Status>>;

    async fn server_join(
        &self,
        _req: Request<ServerJoinRequest>,
    ) -> Result<Response<ServerJoinReply>, Status> {
        Err(Status::unimplemented("clustering is not implemented yet"))
    }

    async fn update_servers(
        &self,
        _req: Request<UpdateServersRequest>,
    ) -> Result<Response<UpdateServersReply>, Status> {
        Err(Status::unimplemented("clustering is not implemented yet"))
    }

    async fn relay(
        &self,
        _req: Request<tonic::Streaming<RelayFrame>>,
    ) -> Result<Response<Self::RelayStream>, Status> {
        Err(Status::unimplemented("clustering is not implemented yet"))
    }
}
