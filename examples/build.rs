fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = mprpc_build::Builder::new();
    // Payloads as `Bytes`: decoding slices the received frame instead of copying it.
    builder.prost_config().bytes([".example"]);
    builder.compile(
        &[
            "../proto/echo.proto",
            "../proto/calculator.proto",
            "../proto/greeter.proto",
        ],
        &["../proto"],
    )?;
    Ok(())
}
