//! Compiles `proto/**/*.proto` with `protox` (pure Rust), so `cargo build`
//! needs no system `protoc`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/agora/raft/v1/raft.proto",
    "proto/agora/market/v1/market.proto",
    "proto/agora/admin/v1/admin.proto",
    "proto/agora/peer/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("agora_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        // Chunks and leaf batches are large: share the received buffer
        // instead of copying it into a Vec.
        .bytes([".agora.peer.v1"])
        .compile_fds(fds)?;
    Ok(())
}
