//! The HTTP/2 connections Chitty serves and makes run on a patched h2
//! (`vendor/h2`, see `vendor/README.md`): a connection's write buffer is
//! made when it has a frame to write and given back once everything is
//! written, its read buffer starts at 1 KiB, and its HPACK decoder's buffer
//! at nothing. These tests drive a connection through everything that
//! touches those buffers, in both directions: frames smaller and larger
//! than what h2 copies into the buffer, DATA frames split at the largest
//! frame size, header blocks too large for one frame (CONTINUATION), and
//! trailers, on streams one after another (the buffer given back and made
//! again in between) and at once, and on connections that take turns with
//! the buffers their thread keeps.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response};
use prost::bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};

/// Bytes of each DATA chunk sent, each side: around h2's copy thresholds
/// (256 and 1,024 bytes), its largest frame (16,384) and past a stream's
/// first flow-control window (65,535).
const CHUNKS: &[usize] = &[
    1, 255, 256, 257, 1023, 1024, 1025, 9, 16_375, 16_384, 16_385, 70_000, 3,
];
/// Bytes of the large header values: more than one frame's 16,384.
const BIG_HEADER: usize = 40_000;
/// How long one test may take.
const DEADLINE: Duration = Duration::from_secs(30);

fn chunk(index: usize, len: usize) -> Bytes {
    Bytes::from(vec![b'a' + (index % 26) as u8; len])
}

fn body() -> Vec<u8> {
    let chunks = CHUNKS.iter().enumerate().map(|(i, &len)| chunk(i, len));
    chunks.flat_map(|c| c.to_vec()).collect()
}

fn big_value(byte: u8) -> HeaderValue {
    HeaderValue::from_bytes(&vec![byte; BIG_HEADER]).unwrap()
}

/// Reads a whole body, giving the flow-control window back as it goes.
async fn read_all(stream: &mut h2::RecvStream) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(data) = stream.data().await {
        let data = data.unwrap();
        stream.flow_control().release_capacity(data.len()).unwrap();
        got.extend_from_slice(&data);
    }
    got
}

/// Serves one connection: every request's body must be [`body`]; each is
/// answered with a large header, [`CHUNKS`] and a large trailer.
async fn serve(listener: TcpListener) {
    let (socket, _) = listener.accept().await.unwrap();
    let mut connection = h2::server::handshake(socket).await.unwrap();
    while let Some(request) = connection.accept().await {
        let (request, mut respond) = request.unwrap();
        tokio::spawn(async move {
            assert_eq!(request.headers()["x-big"], big_value(b'q'));
            let mut stream = request.into_body();
            assert!(read_all(&mut stream).await == body(), "request body");
            let mut response = Response::new(());
            response.headers_mut().insert("x-big", big_value(b'r'));
            let mut send = respond.send_response(response, false).unwrap();
            for (i, &len) in CHUNKS.iter().enumerate() {
                send.send_data(chunk(i, len), false).unwrap();
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-big-trailer", big_value(b't'));
            send.send_trailers(trailers).unwrap();
        });
    }
}

/// One request and its answer, each way a large header, [`CHUNKS`] and
/// (on the answer) a large trailer, all checked byte for byte.
async fn exchange(client: h2::client::SendRequest<Bytes>) {
    let mut client = client.ready().await.unwrap();
    let mut request = Request::post("http://chitty.test/").body(()).unwrap();
    request.headers_mut().insert("x-big", big_value(b'q'));
    let (response, mut send) = client.send_request(request, false).unwrap();
    for (i, &len) in CHUNKS.iter().enumerate() {
        let last = i + 1 == CHUNKS.len();
        send.send_data(chunk(i, len), last).unwrap();
    }
    let response = response.await.unwrap();
    assert_eq!(response.headers()["x-big"], big_value(b'r'));
    let mut stream = response.into_body();
    assert!(read_all(&mut stream).await == body(), "response body");
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["x-big-trailer"], big_value(b't'));
}

async fn connect() -> h2::client::SendRequest<Bytes> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener));
    let socket = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(async move { connection.await.unwrap() });
    client
}

#[tokio::test]
async fn streams_one_after_another_arrive_whole() {
    tokio::time::timeout(DEADLINE, async {
        let client = connect().await;
        for _ in 0..3 {
            exchange(client.clone()).await;
        }
    })
    .await
    .expect("the exchanges did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_at_once_arrive_whole() {
    tokio::time::timeout(DEADLINE, async {
        let client = connect().await;
        let streams: Vec<_> = (0..8)
            .map(|_| tokio::spawn(exchange(client.clone())))
            .collect();
        for stream in streams {
            stream.await.unwrap();
        }
    })
    .await
    .expect("the exchanges did not finish in time");
}

/// Several connections, each side on one thread, writing at once: a buffer
/// one connection gives back goes to another, and nothing of one stream's
/// bytes may turn up in another's.
#[tokio::test]
async fn connections_taking_turns_with_their_threads_buffers_arrive_whole() {
    tokio::time::timeout(DEADLINE, async {
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(connect().await);
        }
        let streams: Vec<_> = clients
            .iter()
            .flat_map(|client| (0..2).map(|_| tokio::spawn(exchange(client.clone()))))
            .collect();
        for stream in streams {
            stream.await.unwrap();
        }
    })
    .await
    .expect("the exchanges did not finish in time");
}
