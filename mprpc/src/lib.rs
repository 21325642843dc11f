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
//!   [`Context`];
//! - [`server`]: accept loop, limits, graceful shutdown; `server::connection` serves one
//!   connection;
//! - `client`: [`Client`], [`CallOptions`]; `connection` multiplexes calls over one socket
//!   and `pool` keeps N of them per endpoint;
//! - `transport`: the batching writer and the draining reader both ends share;
//! - [`error`]: the client's [`Error`];
//! - [`discovery`]: where instances are found ([`discovery::Static`],
//!   [`discovery::InProcess`], [`zookeeper`]) and what a server advertises
//!   ([`discovery::advertise_addr`]); [`balance`] picks one per call; `endpoint`
//!   tracks each instance's load and health (outlier ejection); `retry` decides what is
//!   resent and keeps the retry budget;
//! - [`health`]: the built-in `mprpc.health.Health` service;
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
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
pub mod health;
pub mod interceptor;
pub mod metrics;
mod random;
pub mod server;
pub mod service;
pub mod status;
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
