//! mprpc: length-prefixed protobuf RPC over TCP.
//!
//! Write a `.proto` service, generate a server trait and a typed client with `mprpc-build`,
//! and get many concurrent calls per connection, a connection pool, deadlines that travel
//! to the server, cancellation, and writes batched into few syscalls.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mprpc::{Client, Server};
//! // A server with the services generated from your .proto files:
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! let server = Server::builder() /* .add_service(EchoServer::new(MyEcho)) */ .build();
//! tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
//! // A client; generated clients wrap it: `EchoClient::new(client)`.
//! let client = Client::connect_lazy("127.0.0.1:7000");
//! client.ping().await?;
//! # Ok(()) }
//! ```
//!
//! The `examples` crate of this workspace shows the generated API end to end.
//!
//! # TLS
//!
//! Connections are plaintext unless [`ServerBuilder::tls`] and [`ClientBuilder::tls`] are
//! set. **Plaintext authenticates no one and encrypts nothing: use it on trusted networks
//! only** (loopback, a test). Anything that reaches a plaintext port can call every method
//! and claim any metadata.
//!
//! With mutual TLS ([`tls`]: rustls on ring, TLS 1.3) both ends present a certificate of
//! one CA. The client requires the server's certificate to name the service it looked up
//! (`example.Echo`), so an instance registered in discovery without that service's
//! certificate gets no calls; the server hands the verified names of the client's
//! certificate to interceptors ([`Context::peer_identity`]), which decide what the caller
//! may do from them instead of from metadata it could forge. Both sides reload
//! certificates in place, without dropping a connection or a call.
//!
//! ```
//! use mprpc::tls::{ClientTls, Identity, ServerTls};
//! use mprpc::{Client, Context, Server, Status};
//! # use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
//! # type Fallible<T> = Result<T, Box<dyn std::error::Error>>;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Fallible<()> {
//! # let mut ca = CertificateParams::new(Vec::<String>::new())?;
//! # ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
//! # let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
//! # let issue = |params: CertificateParams| -> Fallible<(String, String)> {
//! #     let key = KeyPair::generate()?;
//! #     Ok((params.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
//! # };
//! # let (server_cert, server_key) = issue(CertificateParams::new(vec!["example.Echo".into()])?)?;
//! # let (next_cert, next_key) = issue(CertificateParams::new(vec!["example.Echo".into()])?)?;
//! # let mut gateway = CertificateParams::new(Vec::<String>::new())?;
//! # gateway.subject_alt_names.push(SanType::URI("spiffe://mpim/gateway".try_into()?));
//! # let (client_cert, client_key) = issue(gateway)?;
//! # let ca_pem = ca.pem();
//! // One CA signs the cluster's certificates (here made with rcgen; in production read with
//! // `Identity::from_pem_files`): the server's names its service, `example.Echo`, the
//! // client's its role, `spiffe://mpim/gateway`.
//! let server_tls = ServerTls::mutual(
//!     Identity::from_pem(server_cert.as_bytes(), server_key.as_bytes())?,
//!     ca_pem.as_bytes(),
//! )?;
//! let server = Server::builder()
//!     .tls(server_tls.clone())
//!     .intercept(|ctx: &mut Context| {
//!         let caller = ctx.peer_identity();
//!         match caller.is_some_and(|id| id.has_uri("spiffe://mpim/gateway")) {
//!             true => Ok(()),
//!             false => Err(Status::permission_denied("gateways only")),
//!         }
//!     })
//!     /* .add_service(EchoServer::new(MyEcho)) */
//!     .build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?.to_string();
//! tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
//!
//! let client_tls = ClientTls::new(ca_pem.as_bytes())?
//!     .identity(Identity::from_pem(client_cert.as_bytes(), client_key.as_bytes())?)?
//!     // Dialled by address, so name the service to require (`discover` does so itself).
//!     .server_name("example.Echo");
//! let client = Client::builder().tls(client_tls).connect_lazy(addr);
//! client.ping().await?;
//!
//! // Rotation: connections accepted from now on present the new certificate.
//! server_tls.reload(Identity::from_pem(next_cert.as_bytes(), next_key.as_bytes())?, None)?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`frame`]: frame prefix, [`Header`] encoding and the [`Codec`] that cuts a stream into
//!   frames with a size cap;
//! - [`status`]: the closed set of wire [`Code`]s and [`Status`];
//! - [`service`]: the [`Service`] trait generated routers implement, and the call
//!   [`Context`] (metadata, deadline, peer, values attached by interceptors);
//! - `method`: [`Method`], the name of one rpc, shared by the client, its interceptors and
//!   both transports;
//! - [`interceptor`]: [`Interceptor`] (server, before each handler) and
//!   [`ClientInterceptor`] (client, before each call);
//! - [`server`]: accept loop, limits, eviction at the connection limit, graceful shutdown;
//!   `server::connection` serves one connection (its timer in `server::clock`, its
//!   unwritten response bytes in `server::queued`), `server::call` starts one call for any
//!   transport (routing, interceptors, deadline, panics, metrics);
//! - `client`: [`Client`] and the call pipeline (interceptors, picking, retries); inside it
//!   `builder` ([`ClientBuilder`], [`ClientConfig`]), `options` ([`CallOptions`]) and
//!   `retry` (what is resent, and the retry budget);
//! - `endpoint`: [`Endpoint`], one instance as a client sees it (transport, load, health)
//!   and one attempt on it; inside it `pool` (connections per endpoint), `connection` (one
//!   multiplexed connection) and `local` (the in-process transport);
//! - `transport`: the batching writer and the draining reader both ends share;
//! - [`tls`]: certificates, the server's and the client's TLS configuration, and the
//!   verified [`PeerIdentity`](tls::PeerIdentity) of a caller; `server::handshake`
//!   bounds and counts the server's handshakes;
//! - [`error`]: the client's [`Error`];
//! - [`discovery`]: where instances are found ([`discovery::Static`],
//!   [`discovery::InProcess`], [`zookeeper`]); [`balance`] picks an [`Endpoint`] per
//!   attempt;
//! - [`health`]: the built-in `mprpc.health.Health` service;
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint;
//! - [`memory`]: giving freed heap memory back after a wave of connections closes;
//! - `backoff` and `random`: the one doubling delay and the one random source every part
//!   uses.
//!
//! Dependencies run one way: `client` uses `balance`, `interceptor` and `endpoint`;
//! `balance` uses `endpoint`; `interceptor` and `endpoint` use `method`; none of them uses
//! `client`.
//!
//! The wire protocol follows, as specified in `docs/protocol.md`.
//!
#![doc = include_str!("../docs/protocol.md")]
#![warn(missing_docs)]

// Generated code names this crate by its public path, also when it is compiled inside it.
extern crate self as mprpc;

mod backoff;
pub mod balance;
mod client;
pub mod discovery;
mod endpoint;
pub mod error;
pub mod frame;
mod hash;
pub mod health;
pub mod interceptor;
pub mod memory;
mod method;
pub mod metrics;
mod random;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;
mod transport;
pub mod zookeeper;

pub use client::{CallOptions, Client, ClientBuilder, Config as ClientConfig};
pub use endpoint::Endpoint;
pub use error::Error;
pub use frame::{Codec, Header, Text};
pub use interceptor::{ClientInterceptor, Interceptor};
pub use method::Method;
pub use server::{ServeError, Server, ServerBuilder};
pub use service::{BoxFuture, Context, Service, TRACE_ID};
pub use status::{Code, Status};

#[doc(hidden)]
pub use bytes::Bytes;
#[doc(hidden)]
pub use prost;
