//! The health service every server answers as `mprpc.health.Health`: `Check` with an empty service
//! name reports the server (`SERVING`, or `NOT_SERVING` once shutdown began), with a name
//! reports whether this server hosts that service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Context, Status};

/// Code generated from `proto/health.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/mprpc.health.rs"));
}

pub use proto::check_response::Serving;
pub use proto::{CheckRequest, CheckResponse, HealthClient, HealthServer};

/// The server's side of the health service.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) services: Vec<&'static str>,
}

impl proto::Health for Health {
    async fn check(&self, _ctx: Context, request: CheckRequest) -> Result<CheckResponse, Status> {
        let status = if !request.service.is_empty()
            && !self.services.iter().any(|s| *s == request.service)
        {
            Serving::ServiceUnknown
        } else if self.draining.load(Ordering::Relaxed) {
            Serving::NotServing
        } else {
            Serving::Serving
        };
        Ok(CheckResponse {
            status: status as i32,
        })
    }
}
