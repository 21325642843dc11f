//! Generates the tonic client and server for `proto/echo.proto`, the same definition the
//! mprpc echo service is generated from, so both sides of the comparison carry identical
//! messages. protox parses the file, so no system `protoc` is needed.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = Path::new("../proto/echo.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([proto], [Path::new("../proto")])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // As in the `examples` crate: payloads are `Bytes`, decoded without a copy.
        .bytes(".example")
        .compile_fds(fds)?;
    Ok(())
}
