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
//! # Layout
//! - [`frame`]: frame prefix, [`Header`] encoding and the [`Codec`] that cuts a stream into
//!   frames with a size cap;
//! - [`status`]: the closed set of wire [`Code`]s and [`Status`];
//! - [`service`]: the [`Service`] trait generated routers implement, and the call
//!   [`Context`] (metadata, deadline, peer, values attached by interceptors);
//! - [`interceptor`]: [`Interceptor`] (server, before each handler) and
//!   [`ClientInterceptor`] (client, before each call);
//! - [`server`]: accept loop, limits, eviction at the connection limit, graceful shutdown;
//!   `server::connection` serves one connection, `server::call` starts one call for any
//!   transport (routing, interceptors, deadline, panics, metrics);
//! - `client`: [`Client`], [`ClientBuilder`], [`CallOptions`]; inside it `endpoint`
//!   (one instance's transport, load and health), `pool` (connections per endpoint),
//!   `connection` (one multiplexed connection), `local` (the in-process transport) and
//!   `retry` (what is resent, and the retry budget);
//! - `transport`: the batching writer and the draining reader both ends share;
//! - [`error`]: the client's [`Error`];
//! - [`discovery`]: where instances are found ([`discovery::Static`],
//!   [`discovery::InProcess`], [`zookeeper`]); [`balance`] picks one per call;
//! - [`health`]: the built-in `mprpc.health.Health` service;
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint;
//! - [`memory`]: giving freed heap memory back after a wave of connections closes;
//! - `backoff` and `random`: the one doubling delay and the one random source every part
//!   uses.
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
pub mod error;
pub mod frame;
mod hash;
pub mod health;
pub mod interceptor;
pub mod memory;
pub mod metrics;
mod random;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;
mod transport;
pub mod zookeeper;

pub use client::{CallOptions, Client, ClientBuilder, Config as ClientConfig, Endpoint, Method};
pub use error::Error;
pub use frame::{Codec, Header, Text};
pub use interceptor::{ClientInterceptor, Interceptor};
pub use server::{ServeError, Server, ServerBuilder};
pub use service::{BoxFuture, Context, Service, TRACE_ID};
pub use status::{Code, Status};

#[doc(hidden)]
pub use bytes::Bytes;
#[doc(hidden)]
pub use prost;
