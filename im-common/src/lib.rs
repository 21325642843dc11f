//! Code every MPIM process shares.
//!
//! The services (`im-user`, `im-presence`, `im-message`, `im-group`) and the binaries that
//! host them build on this crate: the generated protos of `proto/mpim.proto`, configuration,
//! logging, caller identity, and the storage and bus backends with their traits.
//!
//! # Layout
//! - [`proto`]: messages, server traits and clients generated from `proto/mpim.proto`;
//! - [`config`]: TOML + `MPIM_*` environment + flags, and the sections services share;
//! - [`telemetry`]: logging to stderr and rotating files, the metrics recorder, the
//!   shutdown signal;
//! - [`serve`]: running a service process (listen, register, `/metrics`, graceful stop)
//!   and clients of the other services through discovery;
//! - [`identity`]: who is calling (the role in its certificate) and for whom (the user the
//!   gateway names), and the per-method [`identity::Policy`] every service enforces;
//! - [`certs`]: the cluster CA and one certificate per role (`mpim-certs`);
//! - [`tls`]: a process's mutual-TLS configuration and the watch that reloads a rotated
//!   certificate;
//! - [`error`]: [`StoreError`] and its mapping to wire statuses;
//! - [`validate`]: input rules with clear `INVALID_ARGUMENT` messages;
//! - [`ids`]: conversation ids, message ids, the clock;
//! - [`store`]: MySQL/SQLite through sqlx: schema, migrations and the store traits;
//! - [`bus`]: routes, delivery streams, pub/sub and cache on Redis (one server or a Redis
//!   Cluster, `[redis] url` or `[redis] cluster`) or in process.

#![warn(missing_docs)]

/// The messages of `proto/mpim.proto` (from [`im_proto`]) and the server traits and clients
/// `mprpc-build` generates for its services.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    pub use im_proto::*;
    include!(concat!(env!("OUT_DIR"), "/mpim.rs"));
}

pub mod bus;
pub mod certs;
pub mod config;
pub mod error;
pub mod identity;
pub mod ids;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod validate;

pub use error::StoreError;
