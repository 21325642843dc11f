//! Benchmarks of mprpc: the frame codec and loopback round trips (criterion, in
//! `benches/`), and `rpc-compare`, which runs the same unary echo load over mprpc, tonic and
//! tarpc; and `im-bench`, the load generator for an MPIM gateway.
//!
//! Errors are `anyhow` throughout: this crate is a measuring harness that nothing depends on.
//!
//! # Layout
//! - [`load`]: the closed-loop load driver, the [`Caller`](load::Caller) each system
//!   implements, the [`Stats`](load::Stats) every run returns, and the in-process
//!   [`ServerTask`](load::ServerTask);
//! - [`systems`]: one module per RPC system, each with an echo server and a `run` that
//!   drives it with a [`Load`](load::Load);
//! - [`im`]: `im-bench`'s connections, modes and verdict;
//! - `src/bin/rpc-compare.rs`: runs the systems one after the other and prints the table;
//!   `src/bin/im-bench.rs`: runs one [`im`] mode against a gateway.

#![warn(missing_docs)]

pub mod im;
pub mod load;
pub mod systems;
