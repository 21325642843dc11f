//! Generates the messages of `proto/mpim.proto` and `proto/client.proto` (prost), and their
//! protobuf-JSON serde implementations (pbjson).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["../proto/mpim.proto", "../proto/client.proto"];
    for path in protos.iter().chain(&["../proto"]) {
        println!("cargo:rerun-if-changed={path}");
    }
    let fds = protox::compile(protos, ["../proto"])?;
    let descriptors = fds.encode_to_vec();
    prost_build::Config::new().compile_fds(fds)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .out_dir(&out)
        .build(&[".mpim"])?;
    Ok(())
}
