//! tonic (gRPC over HTTP/2), generated from the same `proto/echo.proto`.
//!
//! A tonic `Channel` multiplexes every call over one HTTP/2 connection, and cloning it is
//! how tonic means it to be shared. `channels` > 1 spreads the tasks round robin over that
//! many independent channels, the way one would tune tonic for more throughput per client.

use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::load::{self, Caller, Load, ServerTask, Stats};

#[allow(unreachable_pub, clippy::all)]
mod proto {
    include!(concat!(env!("OUT_DIR"), "/example.rs"));
}

use proto::echo_client::EchoClient;
use proto::echo_server::{Echo as EchoService, EchoServer};
use proto::{EchoRequest, EchoResponse};

struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

struct Call {
    client: EchoClient<Channel>,
    payload: Bytes,
}

impl Caller for Call {
    async fn echo(&mut self) -> anyhow::Result<()> {
        let request = EchoRequest {
            payload: self.payload.clone(),
        };
        let reply = self.client.echo(request).await?.into_inner();
        anyhow::ensure!(reply.payload == self.payload, "echo changed the payload");
        Ok(())
    }
}

/// Runs `load` against an in-process tonic echo server, spreading the tasks over
/// `channels` channels.
///
/// # Errors
/// When the server cannot be started or reached, or does not stop cleanly.
pub async fn run(load: &Load, channels: usize) -> anyhow::Result<Stats> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = ServerTask::spawn(|stopped| async move {
        // As `Server::serve` would; mprpc and tarpc disable Nagle too.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Echo))
            .serve_with_incoming_shutdown(incoming, stopped)
            .await?;
        Ok(())
    });
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    let mut clients = Vec::new();
    for _ in 0..channels.max(1) {
        clients.push(EchoClient::new(endpoint.connect().await?));
    }
    let payload = load.payload();
    let stats = load::drive(load, |i| Call {
        client: clients[i % clients.len()].clone(),
        payload: payload.clone(),
    })
    .await;
    drop(clients);
    server.stop().await?;
    Ok(stats)
}
