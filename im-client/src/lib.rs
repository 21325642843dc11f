//! The MPIM client SDK: a connection to a gateway (TCP or WebSocket) that stays up, and a
//! stream of events in the order to show them.
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
//! # Layout
//! - [`client`]: [`Client`], the generic [`Client::call`] and the message commands; the
//!   friend and group commands are in `friends` and `groups`;
//! - [`options`]: [`Options`] (address, device, timeouts, reconnect backoff);
//! - `connection`: the task that owns the connection: request ids, replies matched to
//!   requests, resume and resend after a reconnect;
//! - [`order`]: per-conversation seq order, duplicates and gaps (pure);
//! - `outbox`: sends waiting for their ack;
//! - [`transport`]: TCP and WebSocket behind one type, and [`Address`];
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

pub mod client;
mod connection;
pub mod error;
pub mod event;
mod friends;
mod groups;
pub mod options;
pub mod order;
mod outbox;
pub mod transport;

pub use client::{Client, Reply, State};
pub use error::Error;
pub use event::{Event, Events};
pub use im_proto;
pub use options::Options;
pub use transport::Address;
