//! tarpc: bincode over length-delimited TCP, one connection shared by every task
//! (a tarpc client multiplexes its calls).

use bytes::Bytes;
use futures::StreamExt;
use tarpc::client;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::load::{self, Caller, Load, ServerTask, Stats};

#[tarpc::service]
trait Echo {
    /// Answers with the payload it is sent.
    async fn echo(payload: Bytes) -> Bytes;
}

#[derive(Clone)]
struct EchoService;

impl Echo for EchoService {
    async fn echo(self, _: context::Context, payload: Bytes) -> Bytes {
        payload
    }
}

struct Call {
    client: EchoClient,
    payload: Bytes,
}

impl Caller for Call {
    async fn echo(&mut self) -> anyhow::Result<()> {
        let reply = self
            .client
            .echo(context::current(), self.payload.clone())
            .await?;
        anyhow::ensure!(reply == self.payload, "echo changed the payload");
        Ok(())
    }
}

async fn serve(
    listener: TcpListener,
    stopped: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut incoming = tarpc::serde_transport::tcp::listen_on(listener, Bincode::default).await?;
    let mut connections = JoinSet::new();
    tokio::pin!(stopped);
    loop {
        let transport = tokio::select! {
            _ = &mut stopped => break,
            next = incoming.next() => match next {
                Some(transport) => transport?,
                None => break,
            },
        };
        // Nagle would delay small responses; mprpc and tonic disable it as well.
        transport.get_ref().set_nodelay(true)?;
        let requests = BaseChannel::with_defaults(transport).execute(EchoService.serve());
        // One task per request, as tarpc's documentation does (and as the other servers do).
        connections.spawn(requests.for_each(|request| async {
            tokio::spawn(request);
        }));
    }
    connections.shutdown().await;
    Ok(())
}

/// Runs `load` against an in-process tarpc echo server.
///
/// # Errors
/// When the server cannot be started or reached, or does not stop cleanly.
pub async fn run(load: &Load) -> anyhow::Result<Stats> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = ServerTask::spawn(|stopped| serve(listener, stopped));
    let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default).await?;
    transport.get_ref().set_nodelay(true)?;
    let client = EchoClient::new(client::Config::default(), transport).spawn();
    let payload = load.payload();
    let stats = load::drive(load, |_| Call {
        client: client.clone(),
        payload: payload.clone(),
    })
    .await;
    drop(client);
    server.stop().await?;
    Ok(stats)
}
