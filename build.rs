//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so building
//! needs no system `protoc`. The encoded descriptor set is also written out for
//! gRPC server reflection.
//!
//! The proto is turned into code three times:
//! * `chittychat.v1.rs`: every message, and the clients;
//! * `server/chittychat.v1.rs`: the servers only, reusing those messages,
//!   except that a Join stream sends `crate::wire::EncodedFrame`: frames
//!   assembled from events encoded once per node rather than once per
//!   recipient. On the wire it is exactly a `JoinFrame`.
//! * `peer/chittychat.v1.rs`: the clients only, reusing those messages,
//!   except that a Relay stream sends `crate::wire::RelayOut`: frames whose
//!   events are those same per-node encodings. On the wire it is exactly a
//!   `RelayFrame`.
//!
//! The servers decode requests with `crate::codec::Codec`, which answers a
//! malformed request with `INVALID_ARGUMENT` rather than `INTERNAL`.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["chitty.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("chitty_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds.clone())?;

    let server_out = out.join("server");
    std::fs::create_dir_all(&server_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::Codec")
        .out_dir(&server_out)
        .extern_path(".chittychat.v1", "crate::proto")
        .extern_path(".chittychat.v1.JoinFrame", "crate::wire::EncodedFrame")
        .compile_fds(fds.clone())?;

    let peer_out = out.join("peer");
    std::fs::create_dir_all(&peer_out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&peer_out)
        .extern_path(".chittychat.v1", "crate::proto")
        .extern_path(".chittychat.v1.RelayFrame", "crate::wire::RelayOut")
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
