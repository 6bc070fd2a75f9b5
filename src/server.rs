//! Serving a node: `serve` takes a bound listener and a shutdown future, so the
//! binary and the tests run exactly the same code.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tracing::info;

use crate::error::Result;
use crate::node::{Node, NodeConfig};
use crate::proto::chitty_chat_server::ChittyChatServer;
use crate::proto::server_mesh_server::ServerMeshServer;
use crate::service::{ChatService, MeshService};

/// How often the server pings an idle HTTP/2 connection, and how long it waits
/// for the answer before dropping it. This is what detects a client whose
/// machine or network vanished without closing its socket.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a node on `listener` until `shutdown` completes. On shutdown every
/// Join stream is ended with `UNAVAILABLE`, then in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = Node::new(config);
    serve_node(listener, node, shutdown).await
}

/// Like [`serve`], for a node the caller has built (and may inspect).
pub async fn serve_node(
    listener: TcpListener,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ChittyChatServer<ChatService>>()
        .await;
    health
        .set_serving::<ServerMeshServer<MeshService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| crate::Error::Protocol(format!("reflection: {e}")))?;

    let node_for_shutdown = node.clone();
    let shutdown = async move {
        shutdown.await;
        info!("shutting down: closing sessions");
        node_for_shutdown.close_sessions("server is shutting down");
    };

    info!(%addr, node = %node.config().node.id, generation = node.config().node.generation, "serving Chitty-Chat");
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ChittyChatServer::new(ChatService::new(node.clone())))
        .add_service(ServerMeshServer::new(MeshService::new(node)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| crate::Error::Unavailable(format!("server failed: {e}")))
}
