//! Serving a node: `serve` takes a bound listener and a shutdown future, so the
//! binary and the tests run exactly the same code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::edge::ChatEdge;
use crate::error::{Error, Result};
use crate::mesh::CheckSecret;
use crate::node::{Node, NodeConfig};
use crate::proto::server::chitty_chat_server::ChittyChatServer;
use crate::proto::server::server_mesh_server::ServerMeshServer;
use crate::service::{ChatService, MeshService};

/// How often the server pings an idle HTTP/2 connection, and how long it waits
/// for the answer before dropping it. This is what detects a client whose
/// machine or network vanished without closing its socket.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows (bytes), for servers and clients alike.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// How long a stopping node waits for its connections to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves a node on `listener` until `shutdown` completes. With
/// `config.boot`, the node first joins the cluster through that member.
///
/// On shutdown the node flushes its events to its peers and tells them it
/// leaves, ends every Join stream with `UNAVAILABLE`, stops its mesh tasks,
/// then lets in-flight calls finish. If the cluster removes this node, it
/// stops the same way and returns [`Error::Removed`].
pub async fn serve(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let boot = config.boot.clone();
    let node = Node::new(config);
    if let Some(boot) = boot {
        node.join_cluster(&boot).await?;
    }
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
    health.set_serving::<ChittyChatServer<ChatService>>().await;
    health.set_serving::<ServerMeshServer<MeshService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Protocol(format!("reflection: {e}")))?;
    if node.config().cluster_secret.is_none() {
        warn!("no cluster secret set: any program that reaches this port can join the mesh");
    }
    let secret = CheckSecret(node.config().cluster_secret.as_deref().map(Arc::from));

    let mesh_tasks = node.start_mesh();
    let fatal = Arc::new(std::sync::OnceLock::new());
    let stopping = node.clone();
    let fatal_reason = fatal.clone();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {
                info!("shutting down: leaving the cluster");
                stopping.leave_cluster().await;
            }
            reason = stopping.removed() => {
                let _ = fatal_reason.set(reason);
            }
        }
        stopping.close_sessions("server is shutting down");
        // Let the streams send their UNAVAILABLE before connections close.
        stopping.streams_closed(DRAIN_TIMEOUT).await;
        stopping.stop_mesh();
        let _ = stopping_tx.send(());
    };
    // Connections get DRAIN_TIMEOUT to close after shutdown begins; a peer
    // that stopped reading (a frozen client) does not hold the node up.
    let drain_deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };

    info!(%addr, advertise = %node.config().advertise, node = %node.id().id, generation = node.id().generation, "serving Chitty-Chat");
    let serving = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Room for a burst of events in flight per stream and connection, so
        // flow control does not stall a busy relay link or session.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ChatEdge::new(node.clone()))
        .add_service(ServerMeshServer::with_interceptor(
            MeshService::new(node.clone()),
            secret,
        ))
        .serve_with_incoming_shutdown(
            // Small frames (an event, a publish reply) must leave at once,
            // not wait for a delayed ACK: Nagle off on every connection.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    let served = tokio::select! {
        served = serving => served,
        _ = drain_deadline => {
            warn!(after = ?DRAIN_TIMEOUT, "connections did not close in time; dropping them");
            Ok(())
        }
    };
    node.stop_mesh();
    for task in mesh_tasks {
        let _ = task.await;
    }
    let mut inbound = node.take_inbound();
    while inbound.join_next().await.is_some() {}
    served.map_err(|e| Error::Unavailable(format!("server failed: {e}")))?;
    match fatal.get() {
        Some(reason) => Err(Error::Removed(reason.clone())),
        None => Ok(()),
    }
}
