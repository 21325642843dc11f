//! Compiles `proto/mprpc.proto` so a unit test can check the hand-written header encoding
//! against the published definition. The crate itself does not use the generated code.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = Path::new("../proto/mprpc.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([proto], [Path::new("../proto")])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
