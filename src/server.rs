//! Serving a node: `serve` takes a bound listener and a shutdown future, so the
//! binary and the tests run exactly the same code.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{info, warn};

use crate::connections::{Admission, ConnectionLimits, Incoming, fit_open_files};
use crate::edge::ChatEdge;
use crate::error::{Error, Result};
use crate::http2::{CONNECTION_WINDOW, STREAM_WINDOW};
use crate::limits::{MESH_MAX_MESSAGE, OversizeLayer};
use crate::mesh::CheckMeshCaller;
use crate::node::{Node, NodeConfig};
use crate::proto::server::chitty_chat_server::ChittyChatServer;
use crate::proto::server::server_mesh_server::ServerMeshServer;
use crate::service::{ChatService, MeshService};
use crate::tls::RequireTlsLayer;
use tonic_health::ServingStatus;

/// How often the server pings an idle HTTP/2 connection, and how long it waits
/// for the answer before dropping it. This is what detects a client whose
/// machine or network vanished without closing its socket.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping node waits for its connections to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves a node on `listener` until `shutdown` completes. With
/// `config.boot`, the node first joins the cluster through one of those
/// members (see [`Node::join_cluster`]).
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
    let (boot, bootstrap) = (config.boot.clone(), config.bootstrap);
    let boot_timeout = if bootstrap {
        config.bootstrap_after
    } else {
        config.boot_timeout
    };
    let node = Node::new(config);
    let boot_list = boot.join(",");
    crate::diagram::start(
        node.id(),
        &node.config().advertise,
        (!boot.is_empty()).then_some(boot_list.as_str()),
    );
    if !boot.is_empty() {
        match node.join_cluster(&boot, boot_timeout).await {
            Ok(()) => {}
            // Nobody answered in time (a refusal is never bootstrapped past):
            // this node is the first one up.
            Err(Error::Unavailable(why)) if bootstrap => {
                warn!(%why, "no --boot member admitted this node: starting a new cluster as its first member (--bootstrap)");
            }
            Err(e) => return Err(e),
        }
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
    // Both versions of server reflection: `grpc.reflection.v1`, and
    // `v1alpha`, which older tools (Python's grpcio-reflection) speak.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e| Error::Protocol(format!("reflection: {e}"));
    let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(reflection_error)?;
    if node.config().cluster_secret.is_none() && node.config().tls.is_none() {
        // `chitty server` refuses to start so unless every address is
        // loopback: then only programs on this machine can join.
        warn!("no cluster secret set: any program on this machine can join the mesh");
    }
    let caller_check = CheckMeshCaller {
        secret: node.config().cluster_secret.as_deref().map(Arc::from),
        // With TLS, the CA closes the mesh: a mesh call must come on a
        // connection that presented a certificate from it.
        require_certificate: node.config().tls.is_some(),
    };

    let mesh_tasks = node.start_mesh();
    if let Some(metrics) = &node.config().metrics_listener {
        let listener = metrics
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .map_err(Error::Io)?;
        tokio::spawn(crate::metrics::serve(listener, node.clone()));
    }
    let fatal = Arc::new(std::sync::OnceLock::new());
    let stopping = node.clone();
    let fatal_reason = fatal.clone();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = health.clone();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {
                // Load balancers and orchestrators stop sending newcomers
                // while the node hands its participants over.
                reporter.set_service_status("", ServingStatus::NotServing).await;
                reporter.set_not_serving::<ChittyChatServer<ChatService>>().await;
                reporter.set_not_serving::<ServerMeshServer<MeshService>>().await;
                info!("shutting down: leaving the cluster");
                stopping.leave_cluster().await;
            }
            reason = stopping.removed() => {
                let _ = fatal_reason.set(reason);
            }
        }
        stopping.close_sessions();
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
    let limits = node.config().connections;
    let admission = Admission::new(ConnectionLimits {
        max_connections: fit_open_files(limits.max_connections),
        ..limits
    });
    let tls = match &node.config().tls {
        Some(tls) => Some(tls.server_config().map_err(Error::Protocol)?),
        None => None,
    };
    let incoming = Incoming::new(listener, admission, tls.clone());
    let serving = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Room for a burst of events in flight per stream and connection, so
        // flow control does not stall a busy relay link or session.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        // On a TLS node, a connection without TLS gets only a refusal.
        .layer(RequireTlsLayer(tls.is_some()))
        // A request over its size limit is RESOURCE_EXHAUSTED, not tonic's
        // OUT_OF_RANGE (see `crate::limits`).
        .layer(OversizeLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ChatEdge::new(node.clone()))
        .add_service(InterceptedService::new(
            ServerMeshServer::new(MeshService::new(node.clone()))
                .max_decoding_message_size(MESH_MAX_MESSAGE)
                .max_encoding_message_size(MESH_MAX_MESSAGE),
            caller_check,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown);
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

/// A client connection as HTTP/2 writes to it: small writes are gathered and
/// sent together, a large one goes out with them in one `writev`.
///
/// h2 copies a DATA frame into its write buffer only below a threshold: 256
/// bytes on a transport with vectored writes, where anything larger is
/// written in a system call of its own. An event is about 300 bytes, so a
/// message fanned out to a hundred sessions on one connection took a hundred
/// system calls. This transport tells h2 it has no vectored writes (so h2
/// copies frames up to 1 KiB), then does the vectored write itself for the
/// large ones: a fan-out leaves in one write per connection, and a large
/// chunk still goes out without an extra copy.
pub struct Gathering {
    io: TcpStream,
    /// Written by h2, not yet sent: at most [`GATHER`] bytes.
    pending: Vec<u8>,
}

/// Writes smaller than this are gathered; at most this much is held.
const GATHER: usize = 16 * 1024;
/// The most buffer a connection keeps once everything is sent.
const IDLE_KEEP: usize = 1024;

impl Gathering {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            pending: Vec::new(),
        }
    }

    /// Sends what is pending; `Ready` once none is.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        // An idle connection keeps at most IDLE_KEEP bytes of buffer: with
        // thousands of idle participants, a buffer grown by one burst (a
        // welcome listing the room) would otherwise stay with each.
        if self.pending.capacity() > IDLE_KEEP {
            self.pending = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl Connected for Gathering {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Gathering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gathering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if data.len() < GATHER && this.pending.len() + data.len() <= GATHER {
            this.pending.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        if this.pending.is_empty() {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        // What is pending, then as much of `data` as the socket takes.
        loop {
            let slices = [IoSlice::new(&this.pending), IoSlice::new(data)];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= this.pending.len() {
                let taken = n - this.pending.len();
                this.pending.clear();
                if taken > 0 {
                    return Poll::Ready(Ok(taken));
                }
                return Pin::new(&mut this.io).poll_write(cx, data);
            }
            this.pending.drain(..n);
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair on loopback: the accepted end wrapped.
    async fn pair() -> (Gathering, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, _) = listener.accept().await.unwrap();
        (Gathering::new(io), client)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_everything_arrives_in_order() {
        let (mut out, mut peer) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut expected = Vec::new();
        // Small writes are held, not sent...
        for i in 0..10u8 {
            let piece = vec![i; 300];
            out.write_all(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
        }
        assert_eq!(out.pending.len(), 3000);
        // ...until a large one takes them along, or the flush.
        let large: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        out.write_all(&large).await.unwrap();
        expected.extend_from_slice(&large);
        for i in 0..100u8 {
            let piece = vec![i; 1 + i as usize];
            out.write_all(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
        }
        out.flush().await.unwrap();
        assert!(out.pending.is_empty());
        out.shutdown().await.unwrap();
        drop(out);
        assert!(reader.await.unwrap() == expected, "the bytes differ");
    }
}
