//! mprpc: the generated echo client over a pool of two multiplexed connections, plaintext
//! or mutual TLS.

use std::net::SocketAddr;

use examples::EchoService;
use examples::proto::{EchoClient, EchoRequest, EchoServer};
use mprpc::tls::{ClientTls, Identity, ServerTls};
use tokio::net::TcpListener;

use crate::load::{self, Caller, Load, ServerTask, Stats};

struct Echo {
    client: EchoClient,
    request: EchoRequest,
}

impl Caller for Echo {
    async fn echo(&mut self) -> anyhow::Result<()> {
        let reply = self.client.echo(&self.request).await?;
        anyhow::ensure!(
            reply.payload == self.request.payload,
            "echo changed the payload"
        );
        Ok(())
    }
}

/// Starts the `examples` echo server on a free loopback port.
///
/// # Errors
/// When the port cannot be bound.
pub async fn start_server() -> anyhow::Result<(SocketAddr, ServerTask)> {
    start_server_with(None).await
}

/// Starts the `examples` echo server on a free loopback port, over `tls` when given.
async fn start_server_with(tls: Option<ServerTls>) -> anyhow::Result<(SocketAddr, ServerTask)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut server = mprpc::Server::builder().add_service(EchoServer::new(EchoService));
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    let server = server.build();
    let task = ServerTask::spawn(|stopped| async move {
        server.serve(listener, stopped).await?;
        Ok(())
    });
    Ok((addr, task))
}

/// A client for `addr` as the comparison sets it up: a pool of two connections.
pub fn client(addr: SocketAddr) -> EchoClient {
    EchoClient::new(
        mprpc::Client::builder()
            .pool_size(2)
            .connect_lazy(addr.to_string()),
    )
}

/// Runs `load` against an in-process mprpc echo server registered in ZooKeeper at `zk`, the
/// client finding it by discovery and picking with power-of-two-choices: the same work as
/// [`run`], plus whatever discovery and balancing cost per call.
///
/// # Errors
/// When ZooKeeper cannot be reached or the server cannot be started or registered.
pub async fn run_discovered(load: &Load, zk: &str) -> anyhow::Result<Stats> {
    use mprpc::zookeeper::{ZkConfig, ZooKeeper};
    let root = format!("/mprpc-bench-{}", std::process::id());
    let registry = ZooKeeper::connect(zk, ZkConfig::default().root(&root)).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let instance = mprpc::discovery::Instance::new(listener.local_addr()?.to_string());
    let server = mprpc::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .build();
    let server_registry = registry.clone();
    let server = ServerTask::spawn(|stopped| async move {
        server
            .serve_registered(listener, &server_registry, instance, stopped)
            .await?;
        Ok(())
    });
    let client = mprpc::Client::builder()
        .pool_size(2)
        .balance(mprpc::balance::P2c)
        .discover(&registry, EchoClient::NAME)
        .await?;
    // Registration and the watch race; wait for the instance to show up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.instances().is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "instance never discovered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let stats = drive(load, EchoClient::new(client)).await;
    server.stop().await?;
    registry.close().await;
    Ok(stats)
}

/// Runs `load` against an in-process mprpc echo server.
///
/// # Errors
/// When the server cannot be started or does not stop cleanly.
pub async fn run(load: &Load) -> anyhow::Result<Stats> {
    let (addr, server) = start_server().await?;
    let stats = drive(load, client(addr)).await;
    server.stop().await?;
    Ok(stats)
}

/// Runs `load` against an mprpc echo server in the same process, called through the
/// in-process transport: no socket, no frames, the same routing, interceptors, deadlines and
/// status codes as over TCP.
///
/// # Errors
/// Never; the signature matches the other rows.
pub async fn run_in_process(load: &Load) -> anyhow::Result<Stats> {
    let server = mprpc::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .build();
    let client = EchoClient::new(mprpc::Client::in_process(&server));
    Ok(drive(load, client).await)
}

/// Runs `load` against an in-process mprpc echo server over mutual TLS: the same work as
/// [`run`], plus TLS 1.3 (AES-GCM through ring) on every byte and the client certificate
/// checked once per connection. The certificates are made at start by a throwaway CA.
///
/// # Errors
/// When the certificates or the server cannot be made, or the server does not stop
/// cleanly.
pub async fn run_mtls(load: &Load) -> anyhow::Result<Stats> {
    let (server_tls, client_tls) = mutual_tls()?;
    let (addr, server) = start_server_with(Some(server_tls)).await?;
    let client = mprpc::Client::builder()
        .pool_size(2)
        .tls(client_tls)
        .connect_lazy(addr.to_string());
    let stats = drive(load, EchoClient::new(client)).await;
    server.stop().await?;
    Ok(stats)
}

/// A CA, a server certificate naming the echo service and a client certificate naming a
/// role, as a cluster would hand them out.
fn mutual_tls() -> anyhow::Result<(ServerTls, ClientTls)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let issue = |params: CertificateParams| -> anyhow::Result<Identity> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok(Identity::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )?)
    };
    let server = issue(CertificateParams::new(vec![EchoClient::NAME.to_owned()])?)?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .subject_alt_names
        .push(SanType::URI("spiffe://bench/client".try_into()?));
    let client = issue(client)?;
    let ca_pem = ca.pem();
    let server = ServerTls::mutual(server, ca_pem.as_bytes())?;
    // Dialled by address: the name to require is the service's, as discovery would.
    let client = ClientTls::new(ca_pem.as_bytes())?
        .identity(client)?
        .server_name(EchoClient::NAME);
    Ok((server, client))
}

/// Runs `load` through `client`, dropping it (and its connections) before returning so the
/// server can stop without waiting for idle connections.
async fn drive(load: &Load, client: EchoClient) -> Stats {
    let request = EchoRequest {
        payload: load.payload(),
    };
    load::drive(load, |_| Echo {
        client: client.clone(),
        request: request.clone(),
    })
    .await
}
