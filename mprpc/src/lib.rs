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
//! - [`client`]: [`Client`], [`CallOptions`]; `connection` multiplexes calls over one socket
//!   and `pool` keeps N of them per endpoint;
//! - `transport`: the batching writer and the draining reader both ends share;
//! - [`error`]: the client's [`Error`];
//! - [`discovery`]: where instances are found ([`discovery::Static`],
//!   [`discovery::InProcess`], [`zookeeper`]); [`balance`] picks one per call; `endpoint`
//!   tracks each instance's load and health (outlier ejection); `retry` decides what is
//!   resent and keeps the retry budget;
//! - [`health`]: the built-in `mprpc.health.Health` service;
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//!
//! # Wire protocol
//!
//! A connection is a TCP stream of frames in both directions. The client opens it and sends
//! requests; the server sends responses in completion order, not request order. There is no
//! handshake: the first frame is a request (or a ping).
//!
//! ## Frame
//!
//! ```text
//! offset  size  field
//! 0       4     length      big-endian u32, bytes that follow this field (= 6 + H + B)
//! 4       2     magic       0x4D 0x50 ("MP")
//! 6       1     version     1
//! 7       1     flags       0; any other value is a protocol error
//! 8       2     header_len  big-endian u16, H
//! 10      H     header      protobuf `mprpc.RpcHeader` (proto/mprpc.proto)
//! 10+H    B     body        protobuf request or response message; may be empty
//! ```
//!
//! A receiver checks the magic and version as soon as it has 7 bytes, and the length against
//! its cap (16 MiB by default) as soon as it has 4, before buffering the frame. A frame that
//! fails a check, or whose header does not decode, ends the connection: the server sends a
//! `GOAWAY` with status `INVALID_ARGUMENT` and a reason, then closes.
//!
//! ## Header (`mprpc.RpcHeader`)
//!
//! | field | no. | type | meaning |
//! |---|---|---|---|
//! | `kind` | 1 | enum | 1 request, 2 response, 3 cancel, 4 ping, 5 pong, 6 goaway |
//! | `request_id` | 2 | uint64 | chosen by the client, unique among its in-flight calls on the connection |
//! | `service` | 3 | string | fully qualified service, e.g. `example.Echo` (requests) |
//! | `method` | 4 | string | method as in the `.proto`, e.g. `Echo` (requests) |
//! | `timeout_us` | 5 | uint64 | caller's remaining budget in µs when sent; 0 = none (requests) |
//! | `status` | 6 | enum | [`Code`] (responses, goaway) |
//! | `message` | 7 | string | reason when `status` is not OK |
//! | `metadata` | 8 | map<string,string> | small pairs such as a trace id (requests) |
//!
//! Unknown header fields are skipped, so fields can be added without a version bump.
//!
//! ## Exchanges
//!
//! - **Call.** The client sends `REQUEST` (id *n*); the server answers exactly one
//!   `RESPONSE` with id *n*: `status` OK and the response message as body, or a non-OK
//!   status, a message and no body. Unknown service or method: `UNIMPLEMENTED`; a body that
//!   does not decode: `INVALID_ARGUMENT`; an id already in flight: `INVALID_ARGUMENT` for
//!   the duplicate (the first call goes on).
//! - **Deadline.** The server starts a clock of `timeout_us` when the request arrives; when it
//!   runs out the handler is dropped and the answer is `DEADLINE_EXCEEDED`.
//! - **Cancel.** The client sends `CANCEL` with the call's id; the server drops the handler
//!   and sends nothing for it.
//! - **Ping.** `PING` with any id is answered by `PONG` with the same id.
//! - **Goaway.** The server sends `GOAWAY` with `request_id` = the highest id it started.
//!   Calls in flight finish; requests that arrive afterwards get `UNAVAILABLE`; the server
//!   closes once the in-flight calls are done. A client sends new calls on a new connection.
//!   If the connection ends before a call is answered, a call with id above the goaway's
//!   `request_id` was never started and is safe to send again.
//!
//! ## Example bytes
//!
//! A call of `example.Echo/Echo` with id 1, a 1 s budget and body `EchoRequest{payload:"hi"}`
//! (`0A 02 68 69`), then its answer:
//!
//! ```text
//! request:  00 00 00 26  4D 50 01 00  00 1C
//!           08 01  10 01  1A 0C "example.Echo"  22 04 "Echo"  28 C0 84 3D
//!           0A 02 68 69
//! response: 00 00 00 0E  4D 50 01 00  00 04
//!           08 02  10 01
//!           0A 02 68 69
//! ```
//!
//! (Fields holding their default value — `status` OK, empty strings — are omitted, as
//! protobuf encoders do; a decoder must accept them either way.)
//!
//! ## Status codes and retries
//!
//! [`Code`] is numbered as gRPC's. A server answers `UNAVAILABLE` or `RESOURCE_EXHAUSTED`
//! only for calls it did not start, which makes those two (and failures to connect or to
//! send) safe to retry; any other failure may have had an effect.

#![warn(missing_docs)]

// Generated code names this crate by its public path, also when it is compiled inside it.
extern crate self as mprpc;

pub mod balance;
mod client;
mod connection;
pub mod discovery;
mod endpoint;
pub mod error;
pub mod frame;
pub mod health;
pub mod metrics;
mod pool;
mod retry;
pub mod server;
pub mod service;
pub mod status;
mod transport;
pub mod zookeeper;

pub use client::{CallOptions, Client, ClientBuilder, Config as ClientConfig, Method};
pub use endpoint::Endpoint;
pub use error::Error;
pub use frame::{Codec, Header, Text};
pub use server::{ServeError, Server, ServerBuilder};
pub use service::{BoxFuture, Context, Service};
pub use status::{Code, Status};

#[doc(hidden)]
pub use bytes::Bytes;
#[doc(hidden)]
pub use prost;
