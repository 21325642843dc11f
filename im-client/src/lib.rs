//! The MPIM client SDK: a connection to a gateway (TCP or WebSocket, either over TLS) that
//! stays up, and a stream of events in the order to show them.
//!
//! A [`Client`] sends commands and waits for their replies; [`Events`] brings what the
//! gateway pushes. Between them the client keeps a conversation whole:
//! - every send carries a random `client_msg_id` and waits in an outbox until its ack;
//!   after a reconnect it goes out again (the gateway dedupes by `client_msg_id`, so the
//!   resend returns the first ack), and the `send` future resolves with that ack;
//! - a lost connection (or a `GoAway`) is followed by reconnects with jittered backoff,
//!   a `Resume` with the last seq held of each conversation, and a sync of every
//!   conversation the gateway names as behind;
//! - conversation entries (messages, recalls, edits, the client's own acknowledged sends
//!   among them) come out in per-conversation seq order, each once; an entry past a gap
//!   waits for a sync of the gap.
//!
//! ```no_run
//! # async fn demo() -> Result<(), im_client::Error> {
//! use im_client::{Client, Event, Options};
//!
//! let (client, mut events) = Client::connect(Options::new("ws://127.0.0.1:6080/ws")).await?;
//! client.login("alice", "secret").await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Addresses and TLS
//! [`Options::address`] takes `host:port` or `tcp://host:port` (length-prefixed protobuf
//! over TCP), `ws://host:port/path` (protobuf in binary WebSocket frames), and the same over
//! TLS as `tls://host:port` and `wss://host:port/path`. TLS is terminated in front of the
//! gateways (by nginx in a deployment); the client checks the server's certificate against
//! the Mozilla roots compiled into it and, when [`Options::ca_file`] names a PEM file, the
//! CA certificates in that file too (a private CA). The certificate must name the host of
//! the address: a DNS name (also sent as SNI) or an IP address. A certificate that is not
//! trusted or names another host fails [`Client::connect`] with an [`Error::Transport`]
//! that says so.
//!
//! ```no_run
//! # async fn demo() -> Result<(), im_client::Error> {
//! use im_client::{Client, Options};
//!
//! let options = Options::new("wss://im.example.com/ws").ca_file("/etc/mpim/ca.pem");
//! let (client, _events) = Client::connect(options).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`], the generic [`Client::call`] and the message commands; the
//!   friend and group commands are in `friends` and `groups`;
//! - [`options`]: [`Options`] (address, CA file, device, timeouts, reconnect backoff);
//! - [`address`]: [`Address`], the server address as written;
//! - `connection`: the task that owns the connection: request ids, reconnects, and one
//!   connection served as its steps (`open`: resume and the call that dialled it; `turn`:
//!   the next message, call or keepalive; `watch`: the silence deadline); inside it
//!   `connection::inbound` matches replies to requests and puts pushes through the order;
//! - [`order`]: per-conversation seq order, duplicates and gaps (pure);
//! - `outbox`: sends waiting for their ack;
//! - [`transport`]: TCP and WebSocket behind one type;
//! - [`tls`]: the rustls [`tls::Connector`] and the plain-or-TLS [`tls::Stream`] under
//!   both transports (also used by `im-bench`);
//! - [`event`]: [`Event`] and the [`Events`] stream;
//! - [`error`]: the [`Error`] of every call.
//!
//! The `im-cli` binary of this crate is a terminal client built on it.

#![warn(missing_docs)]

/// The body variant a command is answered with, or [`Error::UnexpectedReply`].
macro_rules! expect {
    ($reply:expr, $variant:ident) => {
        match $reply {
            Ok(im_proto::client::server_message::Body::$variant(value)) => Ok(value),
            Ok(_) => Err($crate::Error::UnexpectedReply(stringify!($variant))),
            Err(err) => Err(err),
        }
    };
}

pub mod address;
pub mod client;
mod connection;
pub mod error;
pub mod event;
mod friends;
mod groups;
pub mod options;
pub mod order;
mod outbox;
pub mod tls;
pub mod transport;

pub use address::Address;
pub use client::{Client, Reply, State};
pub use error::Error;
pub use event::{Event, Events};
pub use im_proto;
pub use options::Options;
