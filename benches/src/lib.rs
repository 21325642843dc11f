//! Benchmarks of mprpc: the frame codec and loopback round trips (criterion, in
//! `benches/`), and `rpc-compare`, which runs the same unary echo load over mprpc, tonic and
//! tarpc.
//!
//! Errors are `anyhow` throughout: this crate is a measuring harness that nothing depends on.
//!
//! # Layout
//! - [`load`]: the closed-loop load driver, the [`Caller`](load::Caller) each system
//!   implements, the [`Stats`](load::Stats) every run returns, and the in-process
//!   [`ServerTask`](load::ServerTask);
//! - [`systems`]: one module per RPC system, each with an echo server and a `run` that
//!   drives it with a [`Load`](load::Load);
//! - `src/bin/rpc-compare.rs`: runs the systems one after the other and prints the table.

#![warn(missing_docs)]

pub mod load;
pub mod systems;
