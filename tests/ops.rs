//! Operating a node: what generic gRPC tools see (health, reflection), that
//! nobody can act for somebody else, and how a node shuts down.

mod common;

use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{LeaveRequest, ListParticipantsRequest, PublishRequest};
use common::*;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn channel(addr: &str) -> Channel {
    within(
        "a connection",
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect(),
    )
    .await
    .expect("connect")
}

async fn health(addr: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel(addr).await);
    let reply = within(
        "a health check",
        client.check(HealthCheckRequest {
            service: service.to_string(),
        }),
    )
    .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test]
async fn the_grpc_health_check_reports_serving() {
    let server = start_server().await;
    for service in ["", "chittychat.v1.ChittyChat"] {
        let status = health(&server.addr, service)
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?} failed: {s:?}"));
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health(&server.addr, "no.such.Service")
        .await
        .expect_err("an unknown service has no health");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

#[test]
fn the_server_process_answers_health_checks() {
    let server = spawn_server(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime
        .block_on(health(&server.addr, "chittychat.v1.ChittyChat"))
        .expect("health check");
    assert_eq!(status, ServingStatus::Serving);
}

/// `chitty health`, the container image's health check, says whether a node
/// serves in its exit code, and why not on stderr.
#[test]
fn the_health_subcommand_exits_zero_only_for_a_serving_node() {
    let server = spawn_server(&[]);
    let run = |args: &[&str]| {
        std::process::Command::new(CHITTY)
            .arg("health")
            .args(args)
            .output()
            .expect("run chitty health")
    };
    let serving = run(&["--server", &server.addr]);
    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(
        String::from_utf8_lossy(&serving.stdout).trim(),
        format!("{}: SERVING", server.addr)
    );
    let mesh = run(&[
        "--server",
        &server.addr,
        "--service",
        "chittychat.v1.ServerMesh",
    ]);
    assert!(mesh.status.success(), "{mesh:?}");

    let unknown = run(&["--server", &server.addr, "--service", "no.such.Service"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("serves no service \"no.such.Service\""),
        "{stderr}"
    );

    // Nothing listens on a port just freed.
    let closed = format!("127.0.0.1:{}", free_port());
    let down = run(&["--server", &closed, "--timeout-ms", "5000"]);
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(stderr.starts_with(&format!("error: {closed}")), "{stderr}");
}

/// Asks the reflection service one question and returns its answer.
async fn reflect(addr: &str, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let requests = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut replies = within("reflection", client.server_reflection_info(requests))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    within("a reflection answer", replies.message())
        .await
        .expect("a reflection answer")
        .expect("one answer per question")
        .message_response
        .expect("an answer")
}

#[tokio::test]
async fn server_reflection_lists_and_describes_the_chitty_chat_service() {
    let server = start_server().await;
    let MessageResponse::ListServicesResponse(list) =
        reflect(&server.addr, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a list of services");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["chittychat.v1.ChittyChat", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &server.addr,
        MessageRequest::FileContainingSymbol("chittychat.v1.ChittyChat".into()),
    )
    .await
    else {
        panic!("expected the file describing chittychat.v1.ChittyChat");
    };
    let bytes: Vec<u8> = files.file_descriptor_proto.concat();
    for name in ["ChittyChat", "Join", "Publish", "Leave", "JoinFrame"] {
        assert!(
            bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "the descriptor names {name}"
        );
    }
}

/// Older tools (Python's grpcio-reflection) speak only
/// `grpc.reflection.v1alpha`: it answers too.
#[tokio::test]
async fn server_reflection_v1alpha_lists_the_chitty_chat_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let server = start_server().await;
    let mut client = ServerReflectionClient::new(channel(&server.addr).await);
    let requests = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut replies = within(
        "v1alpha reflection",
        client.server_reflection_info(requests),
    )
    .await
    .expect("the v1alpha reflection service answers")
    .into_inner();
    let answer = within("a v1alpha reflection answer", replies.message())
        .await
        .expect("a v1alpha reflection answer")
        .expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a list of services, got {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"chittychat.v1.ChittyChat"),
        "chittychat.v1.ChittyChat in {names:?}"
    );
}

/// Everything a participant can see of another one (its id and name, from
/// events and the participant list) is not enough to publish or leave in its
/// name; the secret token is never shown to anyone else.
#[tokio::test]
async fn nobody_can_publish_or_leave_for_another_participant_without_its_token() {
    let server = start_server().await;
    let mut mallory = join(&server.addr, "Mallory").await;
    let mut alice = join(&server.addr, "Alice").await;
    alice.wait_own_join().await;
    let alice_joined = mallory
        .wait_for("Alice's join", |s| s.is_joined("Alice"))
        .await;
    let alice_id = alice_joined.event.participant_id.clone();
    assert_eq!(alice_id, alice.session.participant_id());

    let mut grpc = ChittyChatClient::new(channel(&server.addr).await);
    for pretend in [alice_id.as_str(), "Alice", ""] {
        let status = grpc
            .publish(PublishRequest {
                session_token: pretend.to_string(),
                text: "I am Alice".into(),
                lamport: 1,
                publish_id: String::new(),
            })
            .await
            .expect_err("publishing as Alice without her token must fail");
        assert!(
            matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "{pretend:?}: {status:?}"
        );
        let status = grpc
            .leave(LeaveRequest {
                session_token: pretend.to_string(),
                lamport: 1,
            })
            .await
            .expect_err("leaving for Alice without her token must fail");
        assert!(
            matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "{pretend:?}: {status:?}"
        );
    }

    // Alice is still there and nothing was said or announced in her name.
    alice.say("still me").await;
    for member in [&mut alice, &mut mallory] {
        member
            .wait_for("still me", |s| s.is_message("Alice", "still me"))
            .await;
        assert!(
            !member
                .seen
                .iter()
                .any(|s| s.event.text == "I am Alice" || s.is_left("Alice")),
            "{} saw something done in Alice's name",
            member.name
        );
    }
    mallory.session.leave().await.expect("Mallory leaves");
    alice
        .wait_for("Mallory's leave", |s| s.is_left("Mallory"))
        .await;

    // The tokens appear nowhere but in their owners' Welcome.
    let tokens = [
        alice.session.welcome().session_token.clone(),
        mallory.session.welcome().session_token.clone(),
    ];
    assert_ne!(tokens[0], tokens[1]);
    assert_ne!(tokens[0], alice_id, "the token is not the public id");
    let participants = grpc
        .list_participants(ListParticipantsRequest {})
        .await
        .expect("ListParticipants")
        .into_inner();
    let listed = format!("{participants:?}");
    for member in [&alice, &mallory] {
        let shown = format!("{:?}", member.seen);
        for token in &tokens {
            assert!(
                !shown.contains(token.as_str()),
                "a token appeared in an event {} received",
                member.name
            );
            assert!(!listed.contains(token.as_str()), "a token is listed");
        }
    }
}

/// On shutdown an open Join stream ends with UNAVAILABLE (instead of holding
/// the shutdown open), `serve` returns, and later calls fail with
/// UNAVAILABLE.
#[tokio::test]
async fn after_shutdown_open_streams_end_and_calls_fail_with_unavailable() {
    let server = start_server().await;
    let addr = server.addr.clone();
    let mut alice = join(&addr, "Alice").await;
    alice.wait_own_join().await;
    let mut grpc = ChittyChatClient::new(channel(&addr).await);
    grpc.list_participants(ListParticipantsRequest {})
        .await
        .expect("the connection works before the shutdown");

    server
        .shutdown()
        .await
        .expect("serve returns cleanly on shutdown");

    let ended = alice
        .drain_to_end()
        .await
        .expect_err("the stream must end with a status, not silently");
    assert_eq!(code(&ended), Code::Unavailable, "{ended}");

    let status = within(
        "a publish after shutdown",
        alice.session.publish("anyone there?"),
    )
    .await
    .expect_err("a publish after shutdown must fail");
    assert_eq!(code(&status), Code::Unavailable, "{status}");
    let status = within(
        "a call on an old connection",
        grpc.list_participants(ListParticipantsRequest {}),
    )
    .await
    .expect_err("a call after shutdown must fail");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let err = within("a join after shutdown", chitty::client::join(&addr, "Bob"))
        .await
        .expect_err("joining a stopped server must fail");
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
}

/// The same with processes: SIGTERM stops the server cleanly even with a
/// client connected, and that client can still be ended by its user: at end
/// of input it gives up on the vanished server and exits.
#[test]
fn a_server_process_stopped_with_sigterm_exits_cleanly_and_its_clients_can_still_quit() {
    let mut server = spawn_server(&[]);
    let mut alice = spawn_client(&server.addr, "Alice");
    alice.wait_joined();
    let status = std::process::Command::new("kill")
        .args(["-s", "TERM", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = server.child.wait_exit();
    assert!(
        exit.success(),
        "the server exits cleanly on SIGTERM: {exit}"
    );

    alice.close_stdin();
    let exit = alice.child.wait_exit();
    let stderr = alice.stderr.snapshot().join("\n");
    assert!(
        !exit.success(),
        "the client could not leave, so it exits with failure ({exit}); stderr:\n{stderr}"
    );
}

/// A node whose stderr reader went away (Ctrl-C on `cluster/run.sh` kills
/// the processes prefixing its log lines) keeps serving, and still leaves
/// gracefully on SIGTERM: writing a log line must not panic it (exit 101).
#[test]
fn a_server_process_whose_stderr_is_closed_keeps_serving_and_stops_cleanly() {
    let mut cmd = test_command(std::process::Command::new(CHITTY));
    let mut child = cmd
        .args(["server", "--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chitty server");
    let stdout = Lines::collect(child.stdout.take().expect("stdout is piped"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut child = ChildGuard::new(child, "chitty server");
    let first = stdout.wait_for_line("the server's first line", |_| true);
    let addr = first
        .strip_prefix("chitty server listening on ")
        .expect("the listening line")
        .to_string();
    // Closes the only read end: every later write to stderr fails (EPIPE).
    drop(stderr);

    // Joining and leaving logs on the node.
    let mut alice = spawn_client(&addr, "Alice");
    alice.wait_joined();
    alice.close_stdin();
    assert!(alice.child.wait_exit().success(), "Alice left normally");
    let bob = spawn_client(&addr, "Bob");
    bob.wait_joined();

    let status = std::process::Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = child.wait_exit();
    assert!(
        exit.success(),
        "the node stops cleanly on SIGTERM with its stderr closed: {exit}"
    );
}

/// `RUST_LOG` sets what a node logs: at its default level every service
/// call and event has a line, and with Chitty's own lines at `warn` (all of
/// them, or Chitty's only) none of them is written.
#[test]
fn a_node_at_warn_writes_no_line_per_call_and_one_at_its_default_does() {
    let node_log = |rust_log: Option<&str>| {
        let mut cmd = test_command(std::process::Command::new(CHITTY));
        cmd.args(["server", "--listen", "127.0.0.1:0"]);
        if let Some(level) = rust_log {
            cmd.env("RUST_LOG", level);
        }
        let mut server = start_server_process(cmd, "chitty server");
        let mut alice = spawn_client(&server.addr, "Alice");
        alice.wait_joined();
        alice.say("hello");
        alice.wait_for_event("Alice's message", |e| e.body == "Alice: hello");
        let status = std::process::Command::new("kill")
            .args(["-s", "TERM", &server.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        assert!(server.child.wait_exit().success(), "the node stops cleanly");
        server.stderr.wait_closed("the node's log")
    };
    let per_call = |line: &&String| line.contains("Publish") || line.contains("Broadcast");
    let default = node_log(None);
    assert!(
        default.iter().filter(per_call).count() >= 3,
        "a Publish and the Broadcasts of the join and the message:\n{}",
        default.join("\n")
    );
    for rust_log in ["warn", "info,chitty=warn"] {
        let log = node_log(Some(rust_log));
        let written: Vec<&String> = log.iter().filter(per_call).collect();
        assert!(written.is_empty(), "at {rust_log}: {written:?}");
    }
}
