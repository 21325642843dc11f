//! Serves the greeter until Ctrl-C or SIGTERM: callers authenticate with a bearer token, and
//! each greeting makes a nested call to an echo service hosted in this process.
//!
//! `greeter-server --listen 127.0.0.1:7002 --user ada=s3cret`
//!
//! Tokens given as arguments are visible to other users of the host (`ps`); a real server
//! reads them from a secret store.

use clap::Parser;
use examples::greeter::{self, Authenticate, LoggedEcho};
use examples::proto::EchoServer;

#[derive(Parser)]
#[command(about = "mprpc greeter server")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7002")]
    listen: String,
    /// A user and the bearer token that authenticates them; repeat for more users.
    #[arg(long = "user", value_name = "NAME=TOKEN", value_parser = parse_user, required = true)]
    users: Vec<(String, String)>,
}

fn parse_user(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, token)) if !name.is_empty() && !token.is_empty() => {
            Ok((name.to_owned(), token.to_owned()))
        }
        _ => Err("expected NAME=TOKEN".to_owned()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::telemetry::init();
    let args = Args::parse();
    let auth = args
        .users
        .into_iter()
        .fold(Authenticate::new(), |auth, (name, token)| {
            auth.user(name, token)
        });
    // The nested hop: no listener, so only this process can call it.
    let backend = mprpc::Server::builder()
        .add_service(EchoServer::new(LoggedEcho))
        .build();
    let server = greeter::server(auth, &backend);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    server
        .serve(listener, examples::telemetry::shutdown_signal())
        .await?;
    Ok(())
}
