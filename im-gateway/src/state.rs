//! The gateway's state: what every connection and background task shares.
//!
//! Its parts are each owned by a module: `registry` (who is connected here), `routes`
//! (the route binds' lanes), `signals` (group members for typing and read receipts),
//! `expiry` (session deadlines). The state's methods are the dispatcher's, the one place
//! client requests are answered: `dispatch` (routing a request), `session` (login, resume,
//! logout) and `signals` (typing, read cursors). Background tasks (`events`, `delivery`,
//! `recheck`) are functions that take the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use im_common::bus::Bus;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Services, Settings, expiry, registry, routes, signals};

/// What every connection and background task of a gateway shares.
pub(crate) struct Shared {
    pub(crate) id: String,
    pub(crate) services: Services,
    pub(crate) bus: Bus,
    pub(crate) settings: Settings,
    pub(crate) registry: registry::Registry,
    pub(crate) lanes: routes::Lanes,
    pub(crate) members: signals::Members,
    pub(crate) expiry: expiry::Expiry,
    /// Cancelled when the gateway shuts down: connections send GoAway and drain.
    pub(crate) stop: CancellationToken,
    /// The connection tasks.
    pub(crate) tasks: TaskTracker,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
