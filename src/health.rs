//! `chitty health`: asks a node whether it serves, over the standard gRPC
//! health protocol (`grpc.health.v1`), and says so in its exit code. It is
//! the health check of the container image, which has no shell and no other
//! program to run one with.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Address of the node to ask (host:port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub server: String,
    /// The service to ask about: `chittychat.v1.ChittyChat` (participants),
    /// `chittychat.v1.ServerMesh` (peers), or empty for the node as a whole.
    /// A node that is shutting down reports NOT_SERVING for all three.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Connect with TLS, accepting only a node whose certificate this CA
    /// (PEM) signed.
    #[arg(long, env = "CHITTY_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Give up after this many milliseconds (connecting included).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Exit code 0 when the node reports SERVING; 1, with the reason on stderr,
/// otherwise (not serving, unreachable, timed out).
pub async fn run_health(args: HealthArgs) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms);
    match tokio::time::timeout(timeout, check(&args)).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("{}: SERVING", args.server);
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("{}: {}", args.server, status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(why)) => {
            eprintln!("error: {}: {why}", args.server);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "error: {}: no answer within {} ms",
                args.server, args.timeout_ms
            );
            ExitCode::FAILURE
        }
    }
}

async fn check(args: &HealthArgs) -> Result<ServingStatus, String> {
    let tls = crate::tls::client_tls(args.tls_ca.as_deref())?;
    let channel = crate::client::connect_channel_with(&args.server, tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => format!("the node serves no service {:?}", args.service),
            _ => format!("{}: {}", status.code().description(), status.message()),
        })?
        .into_inner();
    Ok(ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown))
}
