//! `im-bench`: load for an MPIM gateway over its client protocol, TCP or WebSocket, spoken
//! directly (no client library: the bench must see every duplicate to count it).
//!
//! It logs users in, each on its own long-lived connection, and runs one of three modes:
//! `pairs` (friends sending 1:1 at a target rate), `group` (one group, every member online)
//! and `idle` (connections only, and the gateway's resident memory per connection). Every
//! send carries the time it was due; recipients measure send→receive latency from it and
//! keep, per conversation, the seqs they were pushed, so that the end of the run can say
//! whether every acknowledged message reached every other member exactly once and in seq
//! order. The last line is `RESULT connections=… sent=… acked=… delivered=… lost=… dup=…
//! p50_ms=… p99_ms=… msgs_per_s=…` followed by extra fields.
//!
//! # Layout
//! - [`args`]: the command line;
//! - [`link`]: one connection, TCP or WebSocket, driven by the task that owns it;
//! - [`wire`]: acks and pushes read without allocating, and the reused send request;
//! - [`setup`]: registration, login, friends and the group;
//! - [`drive`]: the task per connection that sends, reads and keeps what it saw;
//! - [`tally`]: seq sets, the verdict (lost, duplicated, out of order) and the RESULT line;
//! - [`modes`]: the `pairs` and `group` runs;
//! - [`idle`]: the `idle` run, its worker processes and the gateway's memory;
//! - [`soak`]: the `soak` run: SDK clients that live through faults, for the drills;
//! - [`rival`]: `--target ejabberd|mqtt`: the `pairs` and `idle` runs against another
//!   system, over [`peer`] connections speaking [`xmpp`] (with [`xml`]) or [`mqtt`].

pub mod args;
pub mod drive;
pub mod idle;
pub mod link;
pub mod modes;
pub mod mqtt;
pub mod peer;
pub mod rival;
pub mod setup;
pub mod soak;
pub mod tally;
pub mod wire;
pub mod xml;
pub mod xmpp;
