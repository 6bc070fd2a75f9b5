//! The client-facing service as mounted on the server: tonic's generated
//! `ChittyChat` router, except for `Join`, whose response body this module
//! writes itself.
//!
//! tonic encodes a streaming response into one buffer per stream that keeps
//! its largest size for the life of the stream: after a burst, every idle
//! participant would hold tens of KiB. [`JoinBody`] instead takes everything
//! the session has queued, writes it as gRPC messages into one buffer of
//! exactly the right size and hands that to HTTP/2 as a single DATA chunk, so
//! a backlog leaves in one write and an idle session holds no buffer at all.
//! The bytes on the wire are the same as tonic's: standard gRPC framing, then
//! `grpc-status` trailers.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use http_body::{Body as _, Frame};
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::node::{Node, SessionStream};
use crate::proto::JoinRequest;
use crate::proto::server::chitty_chat_server::ChittyChatServer;
use crate::service::ChatService;
use crate::wire::EncodedFrame;

/// The gRPC path of `ChittyChat.Join`.
pub const JOIN_PATH: &str = "/chittychat.v1.ChittyChat/Join";
/// The largest `JoinRequest` accepted (a name, a token and a seen vector).
const MAX_JOIN_REQUEST: usize = crate::limits::CLIENT_MAX_REQUEST;
/// gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// `ChittyChat` with its `Join` stream written by [`JoinBody`].
#[derive(Debug, Clone)]
pub struct ChatEdge {
    service: ChatService,
    generated: ChittyChatServer<ChatService>,
}

impl ChatEdge {
    pub fn new(node: Node) -> Self {
        let service = ChatService::new(node);
        Self {
            generated: ChittyChatServer::new(service.clone())
                .max_decoding_message_size(crate::limits::CLIENT_MAX_REQUEST)
                .max_encoding_message_size(crate::limits::CLIENT_MAX_RESPONSE),
            service,
        }
    }
}

impl NamedService for ChatEdge {
    const NAME: &'static str = <ChittyChatServer<ChatService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for ChatEdge {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != JOIN_PATH {
            return self.generated.call(req);
        }
        let service = self.service.clone();
        Box::pin(async move {
            let opened = match read_request(req).await {
                Ok(join) => service.open(join).await,
                Err(status) => Err(status),
            };
            Ok(match opened {
                Ok(stream) => {
                    let mut response = http::Response::new(Body::new(JoinBody::new(stream)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                // A call refused before any message: a trailers-only response.
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads the one `JoinRequest` message of a Join call.
async fn read_request(req: http::Request<Body>) -> Result<JoinRequest, Status> {
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "compression {encoding:?} is not supported; send the request uncompressed"
        )));
    }
    let mut body = req.into_body();
    let mut bytes = BytesMut::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() + data.len() > MAX_JOIN_REQUEST {
                return Err(Status::resource_exhausted(format!(
                    "message too large: a Join request is at most {MAX_JOIN_REQUEST} bytes"
                )));
            }
            bytes.extend_from_slice(&data);
        }
    }
    join_request(&bytes)
}

/// The body of a Join call, read whole: exactly one uncompressed gRPC
/// message (a 5-byte prefix, then the `JoinRequest`), decoded as
/// [`crate::codec::decode`] does.
pub fn join_request(bytes: &[u8]) -> Result<JoinRequest, Status> {
    if bytes.len() < PREFIX {
        return Err(Status::invalid_argument(
            "Join needs exactly one request message",
        ));
    }
    if bytes[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not supported; send the request uncompressed",
        ));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != PREFIX + len {
        return Err(Status::invalid_argument(
            "Join needs exactly one request message",
        ));
    }
    crate::codec::decode(&bytes[PREFIX..])
}

/// A Join response body: what the session has queued, in as few chunks as
/// it takes, then the final status as trailers.
///
/// At most one chunk is out at a time: the next is made only once HTTP/2 has
/// written (or copied for writing) the previous one. Until then new events
/// wait in the session's queue as references to the node's one encoding of
/// each, not as copies, and the next chunk takes all of them. A reader that
/// keeps up gets each event as it comes; one that falls behind, or a
/// connection whose socket is full, costs the node one chunk per session
/// rather than a copy of everything queued.
pub struct JoinBody {
    stream: SessionStream,
    out: Arc<Outstanding>,
    /// A frame that did not fit in the last chunk: the next one starts with it.
    held: Option<EncodedFrame>,
    /// The status to end with, once the data before it has been sent.
    end: Option<Status>,
    finished: bool,
}

impl JoinBody {
    pub fn new(stream: SessionStream) -> Self {
        Self {
            stream,
            out: Arc::default(),
            held: None,
            end: None,
            finished: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.finished = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unsendable) = status.add_header(&mut trailers) {
            trailers.clear();
            let _ = unsendable.add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for JoinBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(status) = this.end.take() {
            return Poll::Ready(Some(Ok(this.trailers(&status))));
        }
        if this.out.pending(cx) {
            return Poll::Pending;
        }
        // Frames up to the session's limit (one larger frame goes on its
        // own); the rest of the backlog follows in the next chunk.
        let limit = this.stream.limit() + 1024;
        // Most chunks hold one frame: the others, if any, go in `rest`.
        let mut first: Option<EncodedFrame> = None;
        let mut rest: Vec<EncodedFrame> = Vec::new();
        let mut len = 0;
        loop {
            let next = match this.held.take() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(&mut this.stream).poll_next(cx),
            };
            match next {
                Poll::Ready(Some(Ok(frame))) => {
                    let size = PREFIX + frame.encoded_len();
                    if first.is_some() && len + size > limit {
                        this.held = Some(frame);
                        break;
                    }
                    len += size;
                    match first {
                        None => first = Some(frame),
                        Some(_) => rest.push(frame),
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    this.end = Some(status);
                    break;
                }
                Poll::Ready(None) => {
                    this.end = Some(Status::ok(""));
                    break;
                }
                Poll::Pending => break,
            }
        }
        let Some(first) = first else {
            return match this.end.take() {
                Some(status) => Poll::Ready(Some(Ok(this.trailers(&status)))),
                None => Poll::Pending,
            };
        };
        let mut chunk = BytesMut::with_capacity(len);
        for frame in std::iter::once(&first).chain(&rest) {
            chunk.put_u8(0);
            chunk.put_u32(frame.encoded_len() as u32);
            frame.encode_raw(&mut chunk);
        }
        this.out.busy.store(true, Ordering::Release);
        let chunk = Bytes::from_owner(Chunk {
            bytes: chunk.freeze(),
            out: this.out.clone(),
        });
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// Whether a session's last chunk is still held by HTTP/2.
#[derive(Debug, Default)]
struct Outstanding {
    busy: AtomicBool,
    /// The body, to wake once the chunk is let go.
    waker: AtomicWaker,
}

impl Outstanding {
    /// Whether a chunk is still out; if so, `cx` is woken when it is let go.
    fn pending(&self, cx: &Context<'_>) -> bool {
        if !self.busy.load(Ordering::Acquire) {
            return false;
        }
        self.waker.register(cx.waker());
        // Let go between the load and the registration: not pending after all.
        self.busy.load(Ordering::Acquire)
    }
}

/// A response chunk; dropping it (HTTP/2 wrote or copied it) lets the body
/// make the next.
struct Chunk {
    bytes: Bytes,
    out: Arc<Outstanding>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.out.busy.store(false, Ordering::Release);
        self.out.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::JoinFrame;
    use crate::proto::join_frame::Frame as Frame_;
    use tonic::Code;

    /// A request body that is these bytes, in one DATA frame.
    struct Once(Option<Bytes>);

    impl http_body::Body for Once {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    async fn read(bytes: Vec<u8>, encoding: Option<&'static str>) -> Result<JoinRequest, Status> {
        let mut req = http::Request::new(Body::new(Once(Some(Bytes::from(bytes)))));
        if let Some(encoding) = encoding {
            req.headers_mut()
                .insert("grpc-encoding", http::HeaderValue::from_static(encoding));
        }
        read_request(req).await
    }

    fn join(name: &str) -> Vec<u8> {
        JoinRequest {
            name: name.into(),
            lamport: 4,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn one_message_is_the_request() {
        let req = read(framed(0, &join("Ann")), None).await.unwrap();
        assert_eq!((req.name.as_str(), req.lamport), ("Ann", 4));
        let req = read(framed(0, &join("Bo")), Some("identity"))
            .await
            .unwrap();
        assert_eq!(req.name, "Bo");
    }

    #[tokio::test]
    async fn anything_else_is_refused_with_a_reason() {
        let two = [framed(0, &join("A")), framed(0, &join("B"))].concat();
        let cases = [
            (Vec::new(), None, Code::InvalidArgument),
            (vec![0, 0, 0], None, Code::InvalidArgument),
            (two, None, Code::InvalidArgument),
            (framed(0, &[0xff, 0xff]), None, Code::InvalidArgument),
            (framed(1, &join("A")), None, Code::Unimplemented),
            (framed(0, &join("A")), Some("gzip"), Code::Unimplemented),
            (
                framed(0, &join(&"x".repeat(MAX_JOIN_REQUEST))),
                None,
                Code::ResourceExhausted,
            ),
        ];
        for (bytes, encoding, code) in cases {
            let status = read(bytes.clone(), encoding).await.unwrap_err();
            assert_eq!(status.code(), code, "{bytes:?}: {status:?}");
            assert!(!status.message().is_empty());
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The gRPC messages of a response chunk.
    fn messages(mut chunk: &[u8]) -> Vec<JoinFrame> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            assert_eq!(chunk[0], 0, "compressed");
            let len = u32::from_be_bytes(chunk[1..PREFIX].try_into().unwrap()) as usize;
            out.push(JoinFrame::decode(&chunk[PREFIX..PREFIX + len]).unwrap());
            chunk = &chunk[PREFIX + len..];
        }
        out
    }

    fn poll(
        body: &mut JoinBody,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(body).poll_frame(cx)
    }

    #[tokio::test]
    async fn the_next_chunk_waits_until_the_last_one_is_let_go() {
        let node = Node::new(crate::node::NodeConfig::new("127.0.0.1:1"));
        let mut body = JoinBody::new(node.join("Ann", 0, None, 0).unwrap());
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        // The Welcome and Ann's join event.
        let Poll::Ready(Some(Ok(first))) = poll(&mut body, &mut cx) else {
            panic!("no first chunk");
        };
        let first = first.into_data().unwrap();
        let Some(Frame_::Welcome(welcome)) = messages(&first)[0].frame.clone() else {
            panic!("the first message is not a Welcome");
        };
        node.publish(&welcome.session_token, "hello", 0, "")
            .await
            .unwrap();

        // The chunk is still held: the message waits in the queue.
        assert!(poll(&mut body, &mut cx).is_pending());
        let before = wakes.0.load(Ordering::SeqCst);
        drop(first);
        assert_eq!(wakes.0.load(Ordering::SeqCst), before + 1, "not woken");
        let Poll::Ready(Some(Ok(next))) = poll(&mut body, &mut cx) else {
            panic!("no chunk after the first was let go");
        };
        let next = next.into_data().unwrap();
        let [
            JoinFrame {
                frame: Some(Frame_::Events(batch)),
            },
        ] = &messages(&next)[..]
        else {
            panic!("not one events frame");
        };
        assert_eq!(batch.events.last().map(|e| e.text.as_str()), Some("hello"));
    }
}
