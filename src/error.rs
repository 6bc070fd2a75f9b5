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
            Error::Core(core::Error::InvalidMessage(_) | core::Error::InvalidName(_)) => {
                Code::InvalidArgument
            }
            Error::Core(core::Error::NameTaken(_)) => Code::AlreadyExists,
            Error::Core(core::Error::UnknownSession) => Code::Unauthenticated,
            Error::Unavailable(_) | Error::Connect { .. } => Code::Unavailable,
            Error::Removed(_) => Code::FailedPrecondition,
            Error::Rpc(status) => return status.clone(),
            Error::Protocol(_) | Error::Io(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
