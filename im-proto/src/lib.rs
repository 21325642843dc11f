//! MPIM's protobuf messages, generated at build time from `proto/mpim.proto` (the services'
//! data types, at the crate root) and `proto/client.proto` (the client protocol, in
//! [`client`]).
//!
//! Every message also implements `serde::Serialize` and `Deserialize` in the protobuf JSON
//! mapping (lowerCamelCase names accepted as well as the proto names, 64-bit integers as
//! strings, enums by name, a oneof's case as a field of its parent): the form WebSocket text
//! frames carry.
//!
//! ```
//! use im_proto::client::{Ping, Request, request::Command};
//!
//! let ping = Request { id: 7, command: Some(Command::Ping(Ping {})) };
//! assert_eq!(serde_json::to_string(&ping).unwrap(), r#"{"id":"7","ping":{}}"#);
//! let parsed: Request = serde_json::from_str(r#"{"id":7,"ping":{}}"#).unwrap();
//! assert_eq!(parsed, ping);
//! ```
//!
//! # Layout
//! - [`codec`]: TCP framing (u32 big-endian length + protobuf, with a size cap);
//! - the crate root: `package mpim` (profiles, messages, conversations, groups, bus payloads);
//! - [`client`]: `package mpim.client` (the envelope, commands, replies and pushes).

#![warn(missing_docs)]

pub mod codec;

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mpim.rs"));
    include!(concat!(env!("OUT_DIR"), "/mpim.serde.rs"));
}
pub use generated::*;

/// The client protocol (`proto/client.proto`); docs/client-protocol.md describes it.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod client {
    include!(concat!(env!("OUT_DIR"), "/mpim.client.rs"));
    include!(concat!(env!("OUT_DIR"), "/mpim.client.serde.rs"));
}
