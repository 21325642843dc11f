//! Generates the built-in health service from `proto/health.proto`, and compiles
//! `proto/mprpc.proto` so a unit test can check the hand-written header encoding against the
//! published definition (the crate itself does not use that generated code).
//!
//! `proto/` here links to the workspace's `proto/` files, so that a packaged crate carries
//! its own copies.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = Path::new("proto");
    let header = protos.join("mprpc.proto");
    println!("cargo:rerun-if-changed={}", header.display());
    let fds = protox::compile([&header], [protos])?;
    prost_build::Config::new().compile_fds(fds)?;
    mprpc_build::compile_protos(&[protos.join("health.proto")], &[protos])?;
    Ok(())
}
