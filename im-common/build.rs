fn main() -> Result<(), Box<dyn std::error::Error>> {
    mprpc_build::compile_protos(&["../proto/mpim.proto"], &["../proto"])?;
    Ok(())
}
