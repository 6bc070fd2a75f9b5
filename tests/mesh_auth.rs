//! The mesh is closed unless every address is loopback: what a node needs
//! to start, and what two nodes whose secrets differ say to each other.
//! Real `chitty server` processes.

mod common;

use std::process::{Command, Stdio};

use common::cluster::{block_on, servers_of};
use common::{ChildGuard, Lines, spawn_server, test_command};

const SECRET: &str = "a-cluster-secret-for-tests";

/// A mesh request carrying the cluster secret, as a member's would.
fn with_secret<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(chitty::mesh::SECRET_HEADER, SECRET.parse().expect("ascii"));
    request
}

/// Runs `chitty server ARGS...` (with `env`) to its end: its exit code,
/// standard output and standard error.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>, String) {
    let mut cmd = test_command(Command::new(common::CHITTY));
    cmd.arg("server").args(args).envs(env.iter().copied());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chitty server");
    let stdout = Lines::collect(child.stdout.take().expect("piped"));
    let stderr = Lines::collect(child.stderr.take().expect("piped"));
    let mut child = ChildGuard::new(child, "chitty server");
    let status = child.wait_exit();
    (
        status.code(),
        stdout.wait_closed("stdout"),
        stderr.wait_closed("stderr").join("\n"),
    )
}

/// Runs `chitty server ARGS...`, which is expected to refuse to start: its
/// exit code and standard error.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, out, stderr) = run_to_exit(args, env);
    assert!(
        out.iter().all(|l| !l.contains("listening on")),
        "a refused node must not serve: {out:?}"
    );
    (code, stderr)
}

#[test]
fn without_a_secret_a_node_refuses_to_listen_beyond_loopback() {
    // 0.0.0.0 is every interface: the port would be open to the network.
    let (code, stderr) = refused_start(&["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0") && stderr.contains("--cluster-secret-file"),
        "the error names the address and what to pass: {stderr}"
    );
    // A loopback listener advertised as a non-loopback address is refused too.
    let (code, stderr) = refused_start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--advertise",
            "192.168.7.7:50051",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("192.168.7.7:50051"), "{stderr}");
    // With a secret, from the environment, the same node starts (told the
    // address others reach it at: 0.0.0.0 is none).
    let node = {
        let mut cmd = test_command(Command::new(common::CHITTY));
        cmd.args([
            "server",
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            "chat.example:50051",
        ])
        .env("CHITTY_CLUSTER_SECRET", SECRET);
        common::start_server_process(cmd, "chitty server on 0.0.0.0")
    };
    assert!(node.addr.starts_with("0.0.0.0:"), "{}", node.addr);
}

#[test]
fn a_secret_too_short_or_an_unreadable_secret_file_is_refused() {
    let (code, stderr) = refused_start(&["--cluster-secret", "short"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("at least 16"), "{stderr}");
    let (code, stderr) = refused_start(
        &["--cluster-secret-file", "/nonexistent/chitty-secret"],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/chitty-secret"), "{stderr}");
}

#[test]
fn nodes_with_the_same_secret_from_a_file_and_the_environment_form_one_cluster() {
    let path = std::env::temp_dir().join(format!("chitty-mesh-auth-{}", std::process::id()));
    std::fs::write(&path, format!("{SECRET}\n")).expect("write the secret file");
    let file = path.to_str().expect("utf-8 path").to_string();
    let boot = spawn_server(&["--cluster-secret-file", &file]);
    let joiner = {
        let mut cmd = test_command(Command::new(common::CHITTY));
        cmd.args(["server", "--listen", "127.0.0.1:0", "--boot", &boot.addr])
            .env("CHITTY_CLUSTER_SECRET", SECRET);
        common::start_server_process(cmd, "joiner")
    };
    std::fs::remove_file(&path).expect("remove the secret file");
    let expected = common::cluster::sorted(&[&boot.addr, &joiner.addr]);
    common::cluster::poll("both nodes list both", || {
        let listed = block_on(servers_of(&boot.addr))?;
        if listed == expected {
            Ok(())
        } else {
            Err(format!("{listed:?}"))
        }
    });
}

/// Starts a joiner through `boot` with `secret` (or none) and expects it to
/// be refused: its exit code and standard error.
fn refused_join(boot: &str, secret: Option<&str>) -> (Option<i32>, String) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--boot", boot];
    if let Some(secret) = secret {
        args.extend(["--cluster-secret", secret]);
    }
    let (code, _, stderr) = run_to_exit(&args, &[]);
    (code, stderr)
}

#[test]
fn mixed_secrets_are_refused_on_both_sides_naming_the_mismatch() {
    // A boot node without a secret does not admit a joiner that has one.
    let open = spawn_server(&[]);
    let (code, stderr) = refused_join(&open.addr, Some(SECRET));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("has no cluster secret but the caller sent one"),
        "the joiner is told why: {stderr}"
    );
    open.stderr.wait_for_line("the boot node's warning", |l| {
        l.contains("refused a mesh call") && l.contains("has no cluster secret")
    });
    // A boot node with a secret does not admit one without, nor a wrong one.
    let closed = spawn_server(&["--cluster-secret", SECRET]);
    let (code, stderr) = refused_join(&closed.addr, None);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("requires the cluster secret and the call carried none"),
        "{stderr}"
    );
    let (code, stderr) = refused_join(&closed.addr, Some("another-secret-of-the-same-kind"));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("wrong cluster secret"), "{stderr}");
    closed.stderr.wait_for_line("the boot node's warning", |l| {
        l.contains("refused a mesh call") && l.contains("wrong cluster secret")
    });
    // Nobody was admitted.
    assert_eq!(
        block_on(servers_of(&open.addr)),
        Ok(vec![open.addr.clone()])
    );
    assert_eq!(
        block_on(servers_of(&closed.addr)),
        Ok(vec![closed.addr.clone()])
    );
}

/// Even a peer that holds the secret (or a program that stole it) never
/// receives a session token: the snapshot of a ServerJoin carries what
/// verifies each one, and a token it could not learn is refused.
#[tokio::test]
async fn a_peer_never_receives_a_usable_session_token() {
    use chitty::proto::chitty_chat_client::ChittyChatClient;
    use chitty::proto::server_mesh_client::ServerMeshClient;
    use chitty::proto::{Member, MemberState, NodeId, PublishRequest, ServerJoinRequest};

    let server = common::start_server_with(|c| c.cluster_secret = Some(SECRET.into())).await;
    let alice = common::join(&server.addr, "Alice").await;
    let token = alice.session.welcome().session_token.clone();
    assert!(!token.is_empty());

    let mut mesh = ServerMeshClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect to the mesh");
    let request = with_secret(ServerJoinRequest {
        member: Some(Member {
            node: Some(NodeId {
                id: "curious".into(),
                generation: 1,
            }),
            addr: "127.0.0.1:9".into(),
            state: MemberState::Alive as i32,
            version: 1,
        }),
    });
    let reply = mesh
        .server_join(request)
        .await
        .expect("a member with the secret is admitted")
        .into_inner();
    assert!(
        reply.participants.iter().any(|p| p.name == "Alice"),
        "the snapshot lists Alice: {:?}",
        reply.participants
    );
    let bytes = prost::Message::encode_to_vec(&reply);
    assert!(
        !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
        "Alice's token is nowhere in the snapshot"
    );
    let grant = reply
        .grants
        .iter()
        .find(|g| !g.token_digest.is_empty())
        .expect("a grant for Alice");
    // What the peer has is no token: publishing with it is refused.
    let mut chat = ChittyChatClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    for guess in [
        String::from_utf8_lossy(&grant.token_digest).into_owned(),
        grant
            .token_digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    ] {
        let guess_len = guess.len();
        let refused = chat
            .publish(PublishRequest {
                session_token: guess,
                text: "I am Alice".into(),
                lamport: 1,
                publish_id: String::new(),
            })
            .await
            .expect_err("a digest is not a token");
        // The raw digest read as text is longer than any token when its
        // invalid bytes become U+FFFD (three bytes each), as about half the
        // digests do: then the length check refuses it before the lookup.
        if guess_len > chitty::core::validate::MAX_TOKEN_BYTES {
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
            assert!(refused.message().contains("session_token"), "{refused}");
        } else {
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
        }
    }
}

/// An authenticated peer still cannot write a node out of the cluster: an
/// UpdateServers saying the node itself is dead, at an absurd version, is
/// ignored, and within bounds it is refuted; the node keeps serving.
#[tokio::test]
async fn a_peer_cannot_declare_a_live_node_dead() {
    use chitty::proto::server_mesh_client::ServerMeshClient;
    use chitty::proto::{Member, MemberState, UpdateServersRequest};

    let server = common::start_server_with(|c| c.cluster_secret = Some(SECRET.into())).await;
    let alice = common::join(&server.addr, "Alice").await;
    let me = alice.session.welcome().node.clone().expect("the node's id");
    let mut mesh = ServerMeshClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect to the mesh");
    for version in [1u64 << 62, 1_000] {
        let request = with_secret(UpdateServersRequest {
            members: vec![Member {
                node: Some(me.clone()),
                addr: server.addr.clone(),
                state: MemberState::Dead as i32,
                version,
            }],
        });
        let view = mesh
            .update_servers(request)
            .await
            .expect("UpdateServers is answered")
            .into_inner();
        let own = view
            .members
            .iter()
            .find(|m| m.node.as_ref() == Some(&me))
            .expect("the node lists itself");
        assert_eq!(
            own.state,
            MemberState::Alive as i32,
            "version {version}: {own:?}"
        );
        assert!(own.version < 1 << 48, "version {version}: {own:?}");
    }
    // Still serving: Alice publishes and receives her message.
    let mut alice = alice;
    alice.say("still here").await;
    alice
        .wait_for("her message", |s| s.is_message("Alice", "still here"))
        .await;
    let listed = servers_of(&server.addr).await.expect("ListServers");
    assert_eq!(listed, vec![server.addr.clone()]);
}

#[test]
fn a_node_listening_on_every_interface_needs_an_advertised_address() {
    let (code, stderr) = refused_start(
        &["--listen", "0.0.0.0:0"],
        &[("CHITTY_CLUSTER_SECRET", SECRET)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot tell which address clients and peers reach it at")
            && stderr.contains("--advertise HOST:PORT"),
        "{stderr}"
    );
}
