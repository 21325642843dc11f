//! This gateway's routes in presence: bound at login, unbound when a connection closes,
//! and all of them kept alive by one Heartbeat per gateway.
//!
//! Binds and unbinds of a user go through one of a few lanes, in order, so that the unbind
//! of a device's old connection never overtakes the bind of its new one; before unbinding,
//! a lane checks that no connection of that device is left here.

use std::sync::Arc;
use std::time::Duration;

use im_common::identity;
use im_proto::{DeviceKind, HeartbeatRequest, Route, UnbindRouteRequest};
use mprpc::CallOptions;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Shared;

const LANES: usize = 8;
const LANE_QUEUE: usize = 1024;

enum Op {
    Bind(Route, oneshot::Sender<Result<(), mprpc::Error>>),
    Unbind { user: u64, device: String },
}

/// The lanes' senders (cheap to share) and, until the gateway serves, their receivers.
pub(crate) struct Lanes {
    senders: Vec<mpsc::Sender<Op>>,
    receivers: Mutex<Vec<mpsc::Receiver<Op>>>,
}

impl Lanes {
    pub(crate) fn new() -> Lanes {
        let (senders, receivers) = (0..LANES).map(|_| mpsc::channel(LANE_QUEUE)).unzip();
        Lanes {
            senders,
            receivers: Mutex::new(receivers),
        }
    }

    fn lane(&self, user: u64) -> &mpsc::Sender<Op> {
        &self.senders[(user % LANES as u64) as usize]
    }

    /// Binds `user`'s `device` to this gateway.
    ///
    /// # Errors
    /// When presence refused or could not be reached.
    pub(crate) async fn bind(
        &self,
        gateway: &str,
        user: u64,
        device: &str,
        kind: DeviceKind,
    ) -> Result<(), mprpc::Error> {
        let route = Route {
            user_id: user,
            device_id: device.to_owned(),
            device_kind: kind as i32,
            gateway_id: gateway.to_owned(),
        };
        let (tx, rx) = oneshot::channel();
        if self.lane(user).send(Op::Bind(route, tx)).await.is_err() {
            return Err(mprpc::Error::Unavailable("gateway is stopping"));
        }
        rx.await
            .unwrap_or(Err(mprpc::Error::Unavailable("gateway is stopping")))
    }

    /// Unbinds `user`'s `device` unless another connection of it is still here.
    pub(crate) async fn unbind(&self, user: u64, device: String) {
        let _ = self.lane(user).send(Op::Unbind { user, device }).await;
    }
}

/// Runs the lanes until `stop` and then until every queued operation is done.
pub(crate) async fn run_lanes(shared: Arc<Shared>, stop: CancellationToken) {
    let receivers = std::mem::take(&mut *shared.lanes.receivers.lock());
    let lanes = receivers
        .into_iter()
        .map(|rx| run_lane(shared.clone(), rx, stop.clone()));
    futures::future::join_all(lanes).await;
}

async fn run_lane(shared: Arc<Shared>, mut rx: mpsc::Receiver<Op>, stop: CancellationToken) {
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            () = stop.cancelled() => {
                // Connections have closed by now: what is queued is all there will be.
                rx.close();
                rx.recv().await
            }
        };
        let Some(op) = op else { return };
        apply(&shared, op).await;
    }
}

async fn apply(shared: &Shared, op: Op) {
    let options = CallOptions::default().timeout(shared.settings.call_timeout());
    match op {
        Op::Bind(route, done) => {
            let options = identity::for_user(options, &identity::User::new(route.user_id));
            let result = shared
                .services
                .presence
                .bind_route_with(&route, &options)
                .await;
            let _ = done.send(result.map(|_| ()));
        }
        Op::Unbind { user, device } => {
            if shared.registry.has_device(user, &device) {
                return;
            }
            let request = UnbindRouteRequest {
                user_id: user,
                device_id: device,
                gateway_id: shared.id.clone(),
            };
            let options = identity::for_user(options, &identity::User::new(user));
            if let Err(err) = shared
                .services
                .presence
                .unbind_route_with(&request, &options)
                .await
            {
                // The route lapses with this gateway's heartbeats at the latest.
                warn!(cause = %err, user_id = user, "route not unbound");
            }
        }
    }
}

/// Refreshes every route of this gateway, one call per period, until `stop`.
pub(crate) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let configured = Duration::from_millis(shared.settings.heartbeat_ms);
    let mut period = configured;
    let request = HeartbeatRequest {
        gateway_id: shared.id.clone(),
    };
    loop {
        let options = CallOptions::default().timeout(shared.settings.call_timeout());
        match shared
            .services
            .presence
            .heartbeat_with(&request, &options)
            .await
        {
            Ok(reply) => {
                if reply.ttl_ms > 0 {
                    // Well within the routes' lifetime, so that one lost beat loses nothing.
                    period =
                        configured.min(Duration::from_millis(reply.ttl_ms / 3).max(MIN_PERIOD));
                }
                if !reply.known {
                    rebind(&shared).await;
                }
            }
            Err(err) => warn!(cause = %err, "heartbeat failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
    }
}

const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Binds again every route this gateway holds: the bus did not know the gateway (Redis
/// restarted empty or was flushed, or the routes lapsed), so pushes would find no route.
/// Through the lanes, so that a connection closing meanwhile is unbound after its bind.
async fn rebind(shared: &Shared) {
    use futures::StreamExt as _;
    let devices = shared.registry.devices();
    if devices.is_empty() {
        return;
    }
    let count = devices.len();
    let failed = futures::stream::iter(devices)
        .map(|(user, device, kind)| async move {
            shared
                .lanes
                .bind(&shared.id, user, &device, kind)
                .await
                .is_err()
        })
        .buffer_unordered(64)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    warn!(
        routes = count,
        failed, "presence did not know this gateway: routes bound again"
    );
}
