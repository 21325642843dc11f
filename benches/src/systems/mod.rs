//! One module per RPC system. Each starts its echo server on `127.0.0.1:0` in the current
//! runtime, drives it with [`load::drive`](crate::load::drive), stops it, and returns the
//! [`Stats`](crate::load::Stats). All echo the same payload through the same
//! `proto/echo.proto` messages (tarpc, which has no protobuf, echoes a `Bytes`).

pub mod mprpc;
pub mod tarpc;
pub mod tonic;
