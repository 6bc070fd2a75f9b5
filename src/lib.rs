//! Chitty: a replicated multi-server chat cluster with Lamport timestamps.
//!
//! The crate is split the way the system is:
//! * [`core`] — the protocol with no I/O: Lamport clocks, validation, the
//!   participant roster, history, publish dedupe, membership, causal
//!   delivery, and [`core::node::NodeCore`], everything one node decides.
//!   Plain types driven by method calls, with time as an input; everything
//!   else is a thin shell around them.
//! * [`node`] — one running node: the executor of its core, with the
//!   delivery log its sessions read (`delivery_log`) and the per-link
//!   queues its outputs feed; [`mesh`] owns the
//!   peer sockets and tasks; [`rate`] is the publish rate limit it applies.
//! * [`sim`] — the deterministic cluster simulator: nodes' cores and
//!   simulated participants in virtual time, and the invariants they keep.
//! * [`service`] — the tonic services, translating protobuf to node calls;
//!   [`edge`] writes the Join stream's response body itself; [`codec`]
//!   decodes their requests.
//! * [`server`] — `serve(listener, config, shutdown)`, shared by the binary
//!   and the tests; [`connections`] caps and times the connections it
//!   admits; [`tls`] is TLS for participants and the mesh, [`cert`] makes
//!   a development CA and node certificates.
//! * [`client`] — the client library: join, publish, leave, receive events.
//! * [`cli`] — the `chitty` command line; [`console`] is the interactive
//!   client's screen, line editor and `/commands`.
//! * [`trace`] — `chitty trace`, the Lamport sequence diagram of a run,
//!   drawn from its JSON logs ([`diagram`] writes the records).
//! * [`limits`] — how large a gRPC message may be, on either side.

pub mod cert;
pub mod cli;
pub mod client;
pub mod codec;
pub mod connections;
pub mod console;
pub mod core;
pub(crate) mod delivery_log;
pub mod diagram;
pub mod edge;
pub mod error;
pub mod failover;
pub mod health;
pub mod http2;
pub mod limits;
pub mod log_format;
pub mod log_writer;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod rate;
pub mod server;
pub mod service;
pub mod sim;
pub mod tls;
pub mod trace;
pub mod wire;

pub use error::Error;

/// Generated protobuf and gRPC code for package `chittychat.v1`.
pub mod proto {
    tonic::include_proto!("chittychat.v1");

    /// The servers, generated apart so that a Join stream sends
    /// [`crate::wire::EncodedFrame`] (see `build.rs`).
    pub mod server {
        include!(concat!(env!("OUT_DIR"), "/server/chittychat.v1.rs"));
    }

    /// The clients, generated apart so that a peer link's `Relay` stream
    /// sends [`crate::wire::RelayOut`] (see `build.rs`). The other mesh calls
    /// use [`server_mesh_client`].
    pub mod peer {
        include!(concat!(env!("OUT_DIR"), "/peer/chittychat.v1.rs"));
    }

    /// Encoded descriptor set of `proto/`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/chitty_descriptor.bin"));
}
