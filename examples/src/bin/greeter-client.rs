//! Asks the greeter for a greeting:
//! `greeter-client --connect 127.0.0.1:7002 --token s3cret Grace`.
//!
//! Prints the trace id it sent, then the greeting; the server's log shows the same trace id
//! on both hops of the call.

use std::time::Duration;

use clap::Parser;
use examples::greeter;
use examples::proto::{GreetRequest, GreeterClient};

#[derive(Parser)]
#[command(about = "mprpc greeter client")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7002")]
    connect: String,
    /// Bearer token sent with every call; without one the server answers UNAUTHENTICATED.
    #[arg(long)]
    token: Option<String>,
    /// Trace id sent with every call; a new random one by default.
    #[arg(long)]
    trace_id: Option<String>,
    /// Deadline of the call in milliseconds; the server passes what is left of it on to its
    /// nested call.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// Who to greet.
    #[arg(default_value = "world")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::telemetry::init();
    let args = Args::parse();
    let trace_id = args.trace_id.unwrap_or_else(greeter::new_trace_id);
    let mut builder = mprpc::Client::builder()
        .timeout(Some(Duration::from_millis(args.timeout_ms)))
        .intercept(greeter::trace_id(trace_id.clone()));
    if let Some(token) = &args.token {
        builder = builder.intercept(greeter::bearer(token));
    }
    let client = GreeterClient::new(builder.connect_lazy(args.connect));
    println!("trace id {trace_id}");
    match client.greet(&GreetRequest { name: args.name }).await {
        Ok(reply) => println!("{}", reply.message),
        Err(err) => {
            eprintln!("error: {err} (code {})", err.code());
            std::process::exit(1);
        }
    }
    Ok(())
}
