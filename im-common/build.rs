fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The messages come from im-proto (which also gives them their JSON form); only the
    // mprpc services are generated here.
    let mut builder = mprpc_build::Builder::new();
    builder.prost_config().extern_path(".mpim", "::im_proto");
    builder.compile(&["../proto/mpim.proto"], &["../proto"])?;
    Ok(())
}
