//! The crate's one error type. It is turned into a `tonic::Status` only at the
//! service edge (see the `From` impl at the bottom), and back from a status on
//! the client side. What the protocol core refuses is [`core::Error`], which
//! knows nothing of gRPC; it is wrapped here.

use tonic::{Code, Status};

use crate::core;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input the protocol core refused (message, name, session).
    #[error(transparent)]
    Core(#[from] core::Error),
    /// The participant publishes faster than the node's rate limit.
    #[error("{0}")]
    RateLimited(String),
    /// The node is shutting down or otherwise cannot serve.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The cluster removed this node (it was unreachable too long).
    #[error("{0}")]
    Removed(String),
    /// A call the server refused or failed (client side).
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    /// Could not reach a server (client side).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server broke the protocol (client side).
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::Core(
                core::Error::InvalidMessage(_)
                | core::Error::InvalidName(_)
                | core::Error::InvalidRequest(_),
            ) => Code::InvalidArgument,
            Error::Core(
                core::Error::NameTaken { .. }
                | core::Error::NameHeld { .. }
                | core::Error::NameHeldElsewhere { .. },
            ) => Code::AlreadyExists,
            Error::Core(core::Error::UnknownSession) => Code::Unauthenticated,
            Error::RateLimited(_) => Code::ResourceExhausted,
            Error::Unavailable(_) | Error::Connect { .. } => Code::Unavailable,
            Error::Core(core::Error::Unavailable(_)) => Code::Unavailable,
            Error::Removed(_) => Code::FailedPrecondition,
            Error::Rpc(status) => return status.clone(),
            Error::Protocol(_) | Error::Io(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The status a Join stream ends with when the node ended its session.
pub fn end_status(reason: &crate::core::node::EndReason) -> Status {
    use crate::core::node::EndReason;
    match reason {
        EndReason::Left => Status::ok(""),
        EndReason::TooSlow { events, bytes } => Status::resource_exhausted(format!(
            "disconnected: too slow to read events (fell more than {events} events or \
             {bytes} bytes behind)"
        )),
        EndReason::ResumedElsewhere => Status::aborted("this session was resumed on another node"),
        EndReason::Replaced => Status::aborted("this session was resumed on another connection"),
        EndReason::AnnouncedLeft => {
            Status::not_found("this session ended: the cluster announced the participant as left")
        }
        EndReason::NameClash => Status::already_exists(
            "another node admitted the same name at the same moment and kept it; \
             join again with another name",
        ),
        EndReason::ShuttingDown => Status::unavailable("server is shutting down"),
    }
}

/// The status a mesh call or relay link is refused with.
pub fn mesh_status(refusal: &crate::core::node::MeshRefusal) -> Status {
    use crate::core::node::MeshRefusal;
    match refusal {
        MeshRefusal::Removed => Status::failed_precondition(refusal.to_string()),
        MeshRefusal::Malformed(_) => Status::invalid_argument(refusal.to_string()),
        MeshRefusal::HoldBackFull => Status::resource_exhausted(refusal.to_string()),
        MeshRefusal::IdInUse(_) => Status::unavailable(refusal.to_string()),
    }
}
