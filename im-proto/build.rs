//! Generates the messages of `proto/mpim.proto` and `proto/client.proto` (prost), and their
//! protobuf-JSON serde implementations (pbjson). The descriptor set is kept in OUT_DIR as
//! `mpim.descriptor.bin`: the test that holds docs/client-protocol.md to the schema reads it.

use std::path::{Path, PathBuf};

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
    std::fs::write(out.join("mpim.descriptor.bin"), &descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .out_dir(&out)
        .build(&[".mpim"])?;
    for file in ["mpim.serde.rs", "mpim.client.serde.rs"] {
        fix_expecting(&out.join(file))?;
    }
    Ok(())
}

/// pbjson's visitors describe what they expect as "expected one of: […]", and serde puts
/// "expected " before that description itself: a client would read "invalid value: integer
/// `9`, expected expected one of: […]". The description becomes "one of: […]".
fn fix_expecting(path: &Path) -> std::io::Result<()> {
    let generated = std::fs::read_to_string(path)?;
    let fixed = generated.replace(
        r#"write!(formatter, "expected one of: {:?}", &FIELDS)"#,
        r#"write!(formatter, "one of: {:?}", &FIELDS)"#,
    );
    std::fs::write(path, fixed)
}
