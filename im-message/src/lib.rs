//! MPIM's message service: 1:1 and group messages with per-conversation sequence numbers,
//! acknowledged only once committed.
//!
//! Run it with `im-message --config im-message.toml` (every key and its default are in
//! `config/im-message.toml`); it serves `mpim.MessageService` on port 6103 and
//! `/metrics` on 7103, registers in ZooKeeper when `[discovery] zookeeper` is set, and stops
//! gracefully on SIGINT/SIGTERM.
//!
//! What it guarantees:
//! - a send is acknowledged only after its row is committed; the ack carries msg_id, seq and
//!   server time; a resend with the same `client_msg_id` gets the original ack and stores
//!   nothing;
//! - seq is per conversation, allocated in the transaction that stores the message: strictly
//!   increasing, gapless for accepted messages, never reused;
//! - concurrent sends share transactions (group commit), serialised per conversation, not
//!   globally;
//! - after the commit, the message is pushed through the delivery stream of each gateway
//!   that holds a recipient's device (the sender's other devices included); a failed push
//!   never fails the send, since Sync is the source of truth;
//! - recall and edit are new events in the conversation that name the original message;
//! - `CheckTyping` answers the gateway whether a user may signal typing in a conversation:
//!   by the rules of posting (a 1:1 peer who accepts the user's messages), except that a
//!   muted group member may still type.
//!
//! # Layout
//! - [`Messages`] (`handler`): the `MessageService` rpcs;
//! - `commit`: group commit, sharded by conversation;
//! - `push`: fan-out into the gateways' delivery streams;
//! - `shard`: which committer and pusher task owns a conversation;
//! - `access`: who may post to, read and type in which conversation;
//! - [`Config`], [`Settings`], [`run`], [`server`]: the process.

#![warn(missing_docs)]

mod access;
mod commit;
mod handler;
mod push;
mod shard;

use im_common::bus::Bus;
use im_common::config::{
    DatabaseConfig, DiscoveryConfig, LogConfig, RedisConfig, ServerConfig, TlsConfig,
};
use im_common::identity::{GATEWAY, Policy};
use im_common::serve::{Discovery, ports};
use im_common::store::Sql;
use serde::Deserialize;

pub use handler::Messages;
pub use shard::conversation_shard;

/// The process's configuration (`im-message.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address and shutdown; default port 6103.
    pub server: ServerConfig,
    /// Where to register.
    pub discovery: DiscoveryConfig,
    /// Mutual TLS with the other MPIM processes (docs/security.md).
    pub tls: TlsConfig,
    /// The message database.
    pub database: DatabaseConfig,
    /// Routes, delivery streams and cache.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
    /// Message rules.
    pub message: Settings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig::on_port(ports::MESSAGE),
            discovery: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            log: LogConfig::default(),
            message: Settings::default(),
        }
    }
}

/// Message rules and the commit pipeline's sizes (`[message]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Whether 1:1 messages need the two users to be friends. Default true. When false,
    /// anyone may message anyone who has not blocked them.
    pub friends_only: bool,
    /// Largest body, in bytes. Default 65536.
    pub max_body_bytes: usize,
    /// How long after sending a sender may recall or edit, in ms. Default 120000. A group's
    /// owner and admins may recall at any time.
    pub recall_window_ms: i64,
    /// Committer tasks (conversations are spread over them). Default 0: 4 on MySQL, 1 on
    /// SQLite.
    pub committers: usize,
    /// Most sends stored in one transaction. Default 256.
    pub max_batch: usize,
    /// Pusher tasks. Default 4.
    pub pushers: usize,
    /// Pushes queued per pusher before further ones are dropped (recipients then sync).
    /// Default 10000.
    pub push_queue: usize,
    /// The node number in message ids (0..1023), unique per instance. Default: random.
    pub node: Option<u16>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            friends_only: true,
            max_body_bytes: 65_536,
            recall_window_ms: 120_000,
            committers: 0,
            max_batch: 256,
            pushers: 4,
            push_queue: 10_000,
            node: None,
        }
    }
}

/// Which peers may call each method: every method acts for an end user, so only a gateway
/// (or the in-process transport inside `mpim`) may call it.
pub static POLICY: Policy = Policy {
    service: "mpim.MessageService",
    methods: &[
        ("Send", GATEWAY),
        ("SendGroup", GATEWAY),
        ("Sync", GATEWAY),
        ("ListConversations", GATEWAY),
        ("MarkRead", GATEWAY),
        ("Recall", GATEWAY),
        ("Edit", GATEWAY),
        ("CheckTyping", GATEWAY),
    ],
};

/// A server with the message service behind the caller checks of [`POLICY`].
pub fn server(messages: Messages) -> mprpc::Server {
    builder(messages).build()
}

/// [`server`], not yet built: [`Discovery::serve`] adds TLS when configured.
pub fn builder(messages: Messages) -> mprpc::ServerBuilder {
    im_common::serve::builder(
        im_common::proto::MessageServiceServer::new(messages),
        &POLICY,
    )
}

/// Runs the service until `shutdown` completes.
///
/// # Errors
/// When the database, Redis or ZooKeeper cannot be reached, or the address cannot be bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sql = Sql::connect(&config.database).await?;
    let bus = Bus::connect(&config.redis).await?;
    let discovery = Discovery::connect(&config.discovery, &config.tls).await?;
    let messages = Messages::new(sql.clone(), bus, config.message.clone());
    discovery
        .serve(builder(messages), &config.server, shutdown)
        .await?;
    sql.close().await;
    Ok(())
}
