//! TLS for participants and the mesh, with real `chitty` processes and
//! certificates made by `chitty cert` in a temporary directory: a TLS
//! cluster chats and fails over; clients and nodes with the wrong (or no)
//! TLS settings are refused, each saying why; what crosses the wire holds
//! no message text; and a connection that never finishes its TLS handshake
//! is closed after the handshake timeout.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitty::tls::TlsSettings;
use common::cluster::{FAST_DETECTION, block_on, wait_members_with};
use common::{
    ClientProcess, DEADLINE, ServerProcess, spawn_server, start_chitty, start_client_process,
    test_command,
};

/// A directory under Cargo's temporary directory for tests, removed when
/// dropped (kept when the test fails, for reading).
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("chitty-tests")
            .join(format!("{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `chitty ARGS...` to its end: exit code, stdout and stderr.
fn run_chitty(args: &[&str]) -> (Option<i32>, String, String) {
    let (mut child, stdout, stderr) = start_chitty(args);
    let status = child.wait_exit();
    (
        status.code(),
        stdout.wait_closed("stdout").join("\n"),
        stderr.wait_closed("stderr").join("\n"),
    )
}

/// A CA made by `chitty cert ca` in its own directory, which signs node
/// certificates with `chitty cert node`.
struct Ca {
    dir: TempDir,
}

impl Ca {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let (code, out, err) = run_chitty(&["cert", "ca", "--out", &dir.path("")]);
        assert_eq!(code, Some(0), "chitty cert ca: {out}\n{err}");
        Self { dir }
    }

    fn cert(&self) -> String {
        self.dir.path("ca.pem")
    }

    /// Makes NAME.pem and NAME-key.pem for 127.0.0.1 and localhost; the
    /// flags a node serves them with (and this CA as --tls-ca).
    fn node(&self, name: &str) -> Vec<String> {
        let (code, out, err) = run_chitty(&[
            "cert",
            "node",
            "--ca",
            &self.dir.path(""),
            "--name",
            name,
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
        ]);
        assert_eq!(code, Some(0), "chitty cert node: {out}\n{err}");
        vec![
            "--tls-cert".into(),
            self.dir.path(&format!("{name}.pem")),
            "--tls-key".into(),
            self.dir.path(&format!("{name}-key.pem")),
            "--tls-ca".into(),
            self.cert(),
        ]
    }

    fn client_settings(&self) -> TlsSettings {
        TlsSettings::client(Path::new(&self.cert())).expect("load the CA")
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Starts `chitty server` with `flags` (and `--boot BOOT`).
fn tls_node(flags: &[String], boot: Option<&str>, extra: &[&str]) -> ServerProcess {
    let mut args = strs(flags);
    args.extend_from_slice(extra);
    if let Some(boot) = boot {
        args.extend(["--boot", boot]);
    }
    spawn_server(&args)
}

/// Starts `chitty client` (`--tls-ca CA` when given) at `addr`.
fn client(addr: &str, name: &str, ca: Option<&str>) -> ClientProcess {
    let mut cmd = test_command(Command::new(common::CHITTY));
    if let Some(ca) = ca {
        cmd.env("CHITTY_TLS_CA", ca);
    }
    start_client_process(cmd, addr, name)
}

/// Waits for a client that is expected to fail to join: its standard error.
fn refused_client(addr: &str, name: &str, ca: Option<&str>) -> String {
    let mut c = client(addr, name, ca);
    let status = c.child.wait_exit();
    let stderr = c.stderr.wait_closed("stderr").join("\n");
    assert!(!status.success(), "the client must fail: {stderr}");
    assert!(
        c.events().is_empty(),
        "a refused client joins nothing: {stderr}"
    );
    stderr
}

#[test]
fn a_tls_cluster_chats_and_a_client_fails_over_to_a_verified_node() {
    let ca = Ca::new("ca");
    let mut n1 = tls_node(&ca.node("node1"), None, &FAST_DETECTION);
    let n2 = tls_node(&ca.node("node2"), Some(&n1.addr), &FAST_DETECTION);
    let n3 = tls_node(&ca.node("node3"), Some(&n2.addr), &FAST_DETECTION);
    let tls = ca.client_settings();
    let all = [n1.addr.as_str(), n2.addr.as_str(), n3.addr.as_str()];
    wait_members_with(&all, &all, Some(&tls));

    let mut alice = client(&n1.addr, "Alice", Some(&ca.cert()));
    alice.wait_joined();
    let bob = client(&n2.addr, "Bob", Some(&ca.cert()));
    bob.wait_joined();
    alice.wait_for_event("Bob's join", |e| {
        e.joined().is_some_and(|(n, _)| n == "Bob")
    });
    alice.say("hello over tls");
    bob.wait_for_message("Alice", "hello over tls");

    // Alice's node dies; she moves to another node, over TLS checked
    // against the same CA (a plaintext or unverified connection would not
    // get past the handshake), and goes on chatting.
    n1.child.kill();
    let moved = alice.wait_moved_from(&n1.addr);
    assert!(
        moved.contains(&n2.addr) || moved.contains(&n3.addr),
        "{moved}"
    );
    alice.say("still here over tls");
    bob.wait_for_message("Alice", "still here over tls");
    let survivors = [n2.addr.as_str(), n3.addr.as_str()];
    wait_members_with(&survivors, &survivors, Some(&tls));
}

#[test]
fn a_client_without_the_ca_or_with_another_ca_is_refused_saying_why() {
    let ca = Ca::new("ca");
    let node = tls_node(&ca.node("node1"), None, &[]);

    let stderr = refused_client(&node.addr, "Plain", None);
    assert!(
        stderr.contains("this node speaks TLS: connect with --tls-ca"),
        "{stderr}"
    );

    let other = Ca::new("other-ca");
    let stderr = refused_client(&node.addr, "Fooled", Some(&other.cert()));
    assert!(
        stderr.contains(&format!(
            "the certificate of {} is not signed by the CA in {}",
            node.addr,
            other.cert()
        )),
        "{stderr}"
    );

    // A TLS client at a node without TLS.
    let plain = spawn_server(&[]);
    let stderr = refused_client(&plain.addr, "Lost", Some(&ca.cert()));
    assert!(stderr.contains("does not speak TLS"), "{stderr}");
}

#[test]
fn a_node_with_a_certificate_from_another_ca_cannot_join() {
    let ca = Ca::new("ca");
    let boot = tls_node(&ca.node("node1"), None, &[]);
    // The impostor trusts the cluster's CA (it is public), but its own
    // certificate comes from another CA.
    let other = Ca::new("other-ca");
    let mut flags = other.node("impostor");
    flags[5] = ca.cert();
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--boot", &boot.addr];
    args.extend(strs(&flags));
    let (code, _, stderr) = run_chitty(&args);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} closed the connection after the TLS handshake: it most likely refused this \
             node's certificate",
            boot.addr
        )),
        "{stderr}"
    );
    boot.stderr.wait_for_line("the boot node's WARN", |l| {
        l.contains("WARN") && l.contains("its certificate is not signed by this cluster's CA")
    });

    // A program with the CA but no certificate of its own reaches the node
    // over TLS, and its mesh calls are refused.
    let refused = block_on(async {
        let tls = ca.client_settings();
        let mut mesh = chitty::mesh::mesh_client(&boot.addr, None, Some(&tls))
            .await
            .expect("connect over TLS");
        mesh.update_servers(chitty::proto::UpdateServersRequest { members: vec![] })
            .await
            .expect_err("refused")
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused
            .message()
            .contains("requires a client certificate from the cluster's CA"),
        "{refused:?}"
    );
    let members = block_on(common::cluster::servers_of_with(
        &boot.addr,
        Some(&ca.client_settings()),
    ))
    .expect("list servers");
    assert_eq!(members, vec![boot.addr.clone()], "nobody joined");
}

#[test]
fn a_node_without_tls_and_a_tls_node_refuse_each_other_saying_why() {
    let ca = Ca::new("ca");
    let tls_boot = tls_node(&ca.node("node1"), None, &[]);
    let (code, _, stderr) = run_chitty(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--boot",
        &tls_boot.addr,
    ]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("this node speaks TLS and the caller does not"),
        "{stderr}"
    );

    let plain_boot = spawn_server(&[]);
    let mut args = vec![
        "server",
        "--listen",
        "127.0.0.1:0",
        "--boot",
        &plain_boot.addr,
    ];
    let flags = ca.node("node2");
    args.extend(strs(&flags));
    let (code, _, stderr) = run_chitty(&args);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} closed the connection during the TLS handshake: it does not speak TLS",
            plain_boot.addr
        )),
        "{stderr}"
    );
    plain_boot
        .stderr
        .wait_for_line("the plaintext node's WARN", |l| {
            l.contains("WARN")
                && l.contains("began a TLS handshake and this node has no --tls-cert")
        });
}

/// A TCP proxy on loopback to `target` that records every byte it carries,
/// both ways. Its threads end when the connections close.
fn recording_proxy(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address").to_string();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let record = captured.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = TcpStream::connect(&target) else {
                return;
            };
            for (mut from, mut to) in [
                (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                (outbound, inbound),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record.lock().unwrap().extend_from_slice(&buf[..n]);
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
    (addr, captured)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Chats through a recording proxy to `node` and returns what it carried.
fn capture_chat(node: &ServerProcess, ca: Option<&str>, text: &str) -> Vec<u8> {
    let (proxy, captured) = recording_proxy(node.addr.clone());
    let mut alice = client(&proxy, "Alice", ca);
    alice.wait_joined();
    alice.say(text);
    alice.wait_for_message("Alice", text);
    alice.close_stdin();
    alice.child.wait_exit();
    captured.lock().unwrap().clone()
}

#[test]
fn a_capture_of_the_traffic_holds_no_message_text() {
    const TEXT: &str = "the eagle lands at midnight";
    // Without TLS the proxy sees the text: the capture can tell.
    let plain = spawn_server(&[]);
    let bytes = capture_chat(&plain, None, TEXT);
    assert!(contains(&bytes, TEXT), "plaintext carries the text");
    assert!(contains(&bytes, "Alice"));

    let ca = Ca::new("ca");
    let node = tls_node(&ca.node("node1"), None, &[]);
    let bytes = capture_chat(&node, Some(&ca.cert()), TEXT);
    assert!(bytes.len() > 1000, "the chat went through the proxy");
    assert_eq!(bytes[0], 0x16, "it begins with a TLS handshake");
    assert!(!contains(&bytes, TEXT), "TLS hides the text");
    assert!(!contains(&bytes, "Alice"), "TLS hides the name");
}

/// Waits until the node closes `conn`; how long that took.
fn wait_closed(conn: &mut TcpStream) -> Duration {
    let started = Instant::now();
    conn.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the node did not close the connection within {DEADLINE:?}")
            }
            Err(_) => return started.elapsed(),
        }
    }
}

#[test]
fn a_connection_that_never_completes_its_tls_handshake_is_closed_after_the_timeout() {
    let ca = Ca::new("ca");
    let node = tls_node(&ca.node("node1"), None, &["--handshake-timeout-ms", "600"]);
    let timeout = Duration::from_millis(600);

    // Silent from the start.
    let mut silent = TcpStream::connect(&node.addr).expect("connect");
    let took = wait_closed(&mut silent);
    assert!(took >= timeout - Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The first bytes of a ClientHello, then nothing.
    let mut partial = TcpStream::connect(&node.addr).expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    let took = wait_closed(&mut partial);
    assert!(took >= timeout - Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A whole TLS handshake, then no HTTP/2 preface: the same deadline.
    let took = block_on(async {
        use tokio::io::AsyncReadExt;
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca.cert()).expect("read the CA");
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("pem")).expect("a CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(&node.addr)
            .await
            .expect("connect");
        let started = Instant::now();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("the TLS handshake completes");
        let mut buf = [0u8; 4096];
        let reading = async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, reading)
            .await
            .expect("the node closes the connection");
        started.elapsed()
    });
    assert!(took >= timeout - Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The node still serves a client that completes its handshake.
    let mut alice = client(&node.addr, "Alice", Some(&ca.cert()));
    alice.wait_joined();
    alice.close_stdin();
    alice.child.wait_exit();
}

#[test]
fn with_mutual_tls_a_node_may_listen_beyond_loopback_without_a_secret() {
    let ca = Ca::new("ca");
    let flags = ca.node("node1");
    let mut args = vec![
        "--listen",
        "0.0.0.0:0",
        "--advertise",
        "node1.example:50051",
    ];
    args.extend(strs(&flags));
    let mut cmd = test_command(Command::new(common::CHITTY));
    cmd.arg("server").args(&args);
    let node = common::start_server_process(cmd, "chitty server on 0.0.0.0 with TLS");
    assert!(node.addr.starts_with("0.0.0.0:"), "{}", node.addr);
    // Without TLS (and without a secret) the same node is refused.
    let (code, _, stderr) = run_chitty(&["server", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-cert, --tls-key, --tls-ca"),
        "{stderr}"
    );
}

/// A boot member that is itself still starting has its port open but does
/// not answer: the TLS handshake with it must not hold the joining node past
/// its --boot-timeout-ms (nodes of a compose cluster start together).
#[test]
fn a_boot_member_that_accepts_but_never_answers_does_not_hold_a_tls_node_past_its_boot_timeout() {
    let ca = Ca::new("ca");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let flags = ca.node("node1");
    let mut args = vec![
        "server",
        "--listen",
        "127.0.0.1:0",
        "--boot",
        &silent_addr,
        "--boot-timeout-ms",
        "1500",
    ];
    args.extend(strs(&flags));
    let started = Instant::now();
    let (code, _, stderr) = run_chitty(&args);
    let took = started.elapsed();
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("could not join the cluster within 1500 ms")
            && stderr.contains(&format!(
                "cannot connect to {silent_addr}: no answer within"
            )),
        "{stderr}"
    );
    println!("gave up after {took:?}");

    // With --bootstrap it starts the cluster instead.
    let node = tls_node(
        &flags,
        Some(&silent_addr),
        &["--bootstrap", "--bootstrap-after-ms", "1500"],
    );
    node.stderr.wait_for_line("the bootstrap warning", |l| {
        l.contains("starting a new cluster as its first member")
    });
    drop(silent);
}
