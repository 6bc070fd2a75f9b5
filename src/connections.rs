//! What a node admits of TCP connections: how many in all and from one
//! address, and how long a connection may take to start speaking HTTP/2.
//!
//! A connection beyond a cap is closed as soon as it is accepted, so it
//! holds a file descriptor for no longer than that; the connections already
//! admitted (participants, peers) are served as before. A connection that
//! does not complete its handshake within the handshake timeout is closed:
//! the TLS handshake on a TLS node, then the HTTP/2 client preface and its
//! first SETTINGS frame, all within the one deadline. Once the handshake is
//! done, HTTP/2 keepalive pings find a peer that went silent.
//!
//! [`Incoming`] does the handshakes of new connections side by side, each
//! in a task of its own, so a slow one holds up no other; it yields a
//! connection once its TLS handshake is done (at once on a node without
//! TLS), and [`Admitted`] times the HTTP/2 preface until the same deadline.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::server::Gathering;

/// Default of `--handshake-timeout-ms`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default of `--max-connections-per-ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
/// Default of `--max-streams-per-connection`.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// File descriptors a node keeps for itself beyond its admitted
/// connections: its listener, its connections to peers, its log.
const RESERVED_FILES: usize = 128;
/// At most one WARN line about refused connections per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A node's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a new connection has to complete its TLS handshake (on a TLS
    /// node) and send the HTTP/2 preface and SETTINGS.
    pub handshake_timeout: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams (calls) on one connection.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// Counts the connections open, and admits a new one only within the caps.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: ConnectionLimits,
    inner: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// When the last WARN line about a refusal was written.
    last_warning: Option<Instant>,
    /// Refusals since then, not written.
    unreported: u64,
}

/// An admitted connection's place in the counts, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    ip: IpAddr,
    inner: Arc<Mutex<Counts>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = lock(&self.inner);
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

fn lock(m: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            inner: Arc::default(),
        }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Admits a connection from `ip`, or says which cap it is over (and logs
    /// it, at most once per [`WARN_INTERVAL`]).
    pub fn admit(&self, ip: IpAddr) -> Option<Permit> {
        let mut counts = lock(&self.inner);
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if counts.total >= self.limits.max_connections {
            Some(format!(
                "{} connections open (--max-connections)",
                counts.total
            ))
        } else if from_ip >= self.limits.max_connections_per_ip {
            Some(format!(
                "{from_ip} connections open from {ip} (--max-connections-per-ip)"
            ))
        } else {
            None
        };
        let Some(refusal) = refusal else {
            counts.total += 1;
            *counts.per_ip.entry(ip).or_insert(0) += 1;
            return Some(Permit {
                ip,
                inner: self.inner.clone(),
            });
        };
        drop(counts);
        self.refused(ip, &refusal);
        None
    }

    /// Logs that a connection from `ip` was refused, and why, at most once
    /// per [`WARN_INTERVAL`] (with a count of the refusals not logged).
    pub fn refused(&self, ip: IpAddr, refusal: &str) {
        let mut counts = lock(&self.inner);
        let now = Instant::now();
        if counts
            .last_warning
            .is_none_or(|last| now >= last + WARN_INTERVAL)
        {
            let unreported = std::mem::take(&mut counts.unreported);
            counts.last_warning = Some(now);
            warn!(
                remote = %ip,
                "refused a connection: {refusal}; {unreported} more refused since the last such line"
            );
        } else {
            counts.unreported += 1;
        }
    }

    /// Connections open now, in all.
    pub fn open(&self) -> usize {
        lock(&self.inner).total
    }
}

/// The soft limit on open files, raised to the hard limit if `wanted` does
/// not fit under it; `max_connections` lowered (with a WARN line) if it
/// still does not fit, so that the node never runs out of file descriptors
/// for the connections it admits.
pub fn fit_open_files(max_connections: usize) -> usize {
    let wanted = max_connections.saturating_add(RESERVED_FILES);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return max_connections;
        }
        if (limit.rlim_cur as u128) < wanted as u128 && limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max.min(wanted as libc::rlim_t),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let available = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    if available >= wanted {
        return max_connections;
    }
    let fitted = available.saturating_sub(RESERVED_FILES).max(1);
    warn!(
        open_files = available,
        "--max-connections {max_connections} lowered to {fitted} to fit the open-file limit \
         (ulimit -n)"
    );
    fitted
}

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: length (24 bits), type, flags, stream id.
const FRAME_HEADER: usize = 9;

/// An admitted connection: holds its [`Permit`] for as long as it is open,
/// and fails its reads once the handshake timeout passes before the peer
/// sent the HTTP/2 preface and a frame after it (which must be SETTINGS).
#[derive(Debug)]
pub struct Admitted<IO> {
    io: IO,
    handshake: Option<Handshake>,
    _permit: Permit,
}

#[derive(Debug)]
struct Handshake {
    deadline: Pin<Box<Sleep>>,
    /// The first bytes read, up to the end of the first frame header.
    head: [u8; PREFACE.len() + FRAME_HEADER],
    got: usize,
    /// The bytes the handshake takes, once the frame header gave its length.
    need: Option<usize>,
}

impl Handshake {
    /// Takes note of `bytes`, read next; whether the handshake is complete
    /// (or is not HTTP/2 at all, which h2 refuses at once).
    fn read(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        if self.got < self.head.len() {
            let n = rest.len().min(self.head.len() - self.got);
            self.head[self.got..self.got + n].copy_from_slice(&rest[..n]);
            self.got += n;
            rest = &rest[n..];
            let preface = self.got.min(PREFACE.len());
            if self.head[..preface] != PREFACE[..preface] {
                return true;
            }
            if self.got == self.head.len() {
                let h = &self.head[PREFACE.len()..];
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                self.need = Some(self.head.len() + len);
            }
        }
        self.got += rest.len();
        self.need.is_some_and(|need| self.got >= need)
    }
}

impl<IO> Admitted<IO> {
    /// `io`, which must complete the HTTP/2 handshake by `deadline`.
    pub fn new(io: IO, permit: Permit, deadline: Instant) -> Self {
        Self {
            io,
            handshake: Some(Handshake {
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                head: [0; PREFACE.len() + FRAME_HEADER],
                got: 0,
                need: None,
            }),
            _permit: permit,
        }
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(handshake) = &mut this.handshake else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                if handshake.read(&buf.filled()[before..]) {
                    this.handshake = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match handshake.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface and SETTINGS within the handshake timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the services learn of the connection a call came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate chain presented in the TLS handshake, already
    /// verified against the cluster's CA.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A connection after its TLS handshake, or without TLS.
pub enum Link {
    Plain(Gathering),
    Tls(Box<tokio_rustls::server::TlsStream<Gathering>>),
}

impl Connected for Link {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Link::Plain(io) => ConnInfo {
                remote: io.connect_info().remote_addr(),
                tls: false,
                peer_certs: None,
            },
            Link::Tls(stream) => {
                let (io, session) = stream.get_ref();
                ConnInfo {
                    remote: io.connect_info().remote_addr(),
                    tls: true,
                    peer_certs: session
                        .peer_certificates()
                        .filter(|certs| !certs.is_empty())
                        .map(|certs| Arc::new(certs.to_vec())),
                }
            }
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Link::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(io) => Pin::new(io).poll_write(cx, data),
            Link::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Link::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Link::Plain(io) => io.is_write_vectored(),
            Link::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(io) => Pin::new(io).poll_flush(cx),
            Link::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Link::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections a node serves: accepted, admitted within the caps, and
/// handshaken (TLS with `tls`) each in a task of its own, owned by this
/// stream (dropping it ends them).
pub struct Incoming {
    listener: TcpListener,
    admission: Admission,
    tls: Option<TlsAcceptor>,
    handshakes: JoinSet<Option<Admitted<Link>>>,
}

impl Incoming {
    pub fn new(
        listener: TcpListener,
        admission: Admission,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        Self {
            listener,
            admission,
            tls: tls.map(TlsAcceptor::from),
            handshakes: JoinSet::new(),
        }
    }

    fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        // Small frames (an event, a publish reply) must leave at once, not
        // wait for a delayed ACK: Nagle off on every connection.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // A connection over a cap is dropped here, which closes it.
        let Some(permit) = self.admission.admit(remote.ip()) else {
            return;
        };
        let deadline = Instant::now() + self.admission.limits().handshake_timeout;
        self.handshakes.spawn(handshake(
            stream,
            remote,
            permit,
            deadline,
            self.tls.clone(),
            self.admission.clone(),
        ));
    }
}

/// A new connection's TLS handshake (on a TLS node) by `deadline`; `None`
/// if it fails, which closes the connection.
async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    permit: Permit,
    deadline: Instant,
    tls: Option<TlsAcceptor>,
    admission: Admission,
) -> Option<Admitted<Link>> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        debug!(%remote, "connection closed or silent before its handshake");
        return None;
    }
    let speaks_tls = first[0] == TLS_HANDSHAKE_RECORD;
    let link = match (tls, speaks_tls) {
        (Some(acceptor), true) => {
            let accepted =
                tokio::time::timeout_at(deadline, acceptor.accept(Gathering::new(stream))).await;
            match accepted {
                Ok(Ok(stream)) => Link::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    match crate::tls::explain_accept_error(&e) {
                        Some(why) => admission.refused(remote.ip(), &format!("{remote}: {why}")),
                        None => debug!(%remote, error = %e, "TLS handshake failed"),
                    }
                    return None;
                }
                Err(_) => {
                    debug!(%remote, "no TLS handshake within the handshake timeout");
                    return None;
                }
            }
        }
        (Some(_), false) => {
            // Served only to refuse each call with a status that says what
            // to pass (see `tls::plaintext_refusal`).
            admission.refused(
                remote.ip(),
                &format!("{remote} does not speak TLS (its calls are refused)"),
            );
            Link::Plain(Gathering::new(stream))
        }
        (None, true) => {
            admission.refused(
                remote.ip(),
                &format!(
                    "{remote} began a TLS handshake and this node has no --tls-cert: give every \
                     node and client of the cluster the same TLS settings"
                ),
            );
            return None;
        }
        (None, false) => Link::Plain(Gathering::new(stream)),
    };
    Some(Admitted::new(link, permit, deadline))
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Admitted<Link>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, remote))) => this.accepted(stream, remote),
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                // Failed (closed) or, if it panicked, dropped.
                Poll::Ready(Some(_)) => continue,
                // The listener's waker is registered: a new connection
                // wakes this stream, which then polls its handshake.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..Default::default()
        }
    }

    #[test]
    fn connections_are_admitted_within_both_caps_and_a_closed_one_frees_its_place() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let admission = Admission::new(limits(3, 2));
        let a1 = admission.admit(a).expect("first from a");
        let _a2 = admission.admit(a).expect("second from a");
        assert!(
            admission.admit(a).is_none(),
            "a third from a is over the cap"
        );
        let _b1 = admission.admit(b).expect("first from b");
        assert!(
            admission.admit(c).is_none(),
            "a fourth in all is over the cap"
        );
        assert_eq!(admission.open(), 3);
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _c1 = admission.admit(c).expect("room again once one closed");
        assert!(admission.admit(a).is_none());
    }

    fn handshake() -> Handshake {
        Handshake {
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            head: [0; PREFACE.len() + FRAME_HEADER],
            got: 0,
            need: None,
        }
    }

    #[tokio::test]
    async fn the_handshake_is_the_preface_and_the_first_frame_however_it_is_split() {
        // SETTINGS with one setting (6 bytes), then a PING that follows.
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        let complete = bytes.len();
        bytes.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        for split in 1..complete {
            let mut h = handshake();
            assert!(!h.read(&bytes[..split]), "incomplete at {split}");
            assert!(h.read(&bytes[split..]), "complete after {split}");
        }
        let mut h = handshake();
        for (i, byte) in bytes[..complete].iter().enumerate() {
            assert_eq!(h.read(&[*byte]), i + 1 == complete, "byte {i}");
        }
        // Not HTTP/2 in clear text: not timed here.
        assert!(handshake().read(b"\x16\x03\x01\x02\x00"));
        assert!(!handshake().read(b"PRI * HTTP/2.0"));
    }
}
