//! This gateway's routes in presence: bound at login, unbound when a connection closes,
//! and all of them kept alive by one Heartbeat per gateway.
//!
//! Binds and unbinds of one device run in order, so that the unbind of a device's old
//! connection never overtakes the bind of its new one; before unbinding, the lanes check
//! that no connection of that device is left here. Different devices' calls run at once
//! (up to [`MAX_CALLS`]), so one slow presence call holds up only its own device.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use im_common::identity;
use im_proto::{DeviceKind, HeartbeatRequest, Route, UnbindRouteRequest};
use mprpc::CallOptions;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Shared;

/// Operations queued before callers wait for room.
const QUEUE: usize = 8192;
/// Presence calls at once.
const MAX_CALLS: usize = 256;

enum Op {
    Bind(Route, oneshot::Sender<Result<(), mprpc::Error>>),
    Unbind { user: u64, device: String },
}

impl Op {
    /// What the operation must stay in order with: its user's device.
    fn key(&self) -> (u64, String) {
        match self {
            Op::Bind(route, _) => (route.user_id, route.device_id.clone()),
            Op::Unbind { user, device } => (*user, device.clone()),
        }
    }
}

/// The queue into the lanes (cheap to share) and, until the gateway serves, its receiver.
pub(crate) struct Lanes {
    sender: mpsc::Sender<Op>,
    receiver: Mutex<Option<mpsc::Receiver<Op>>>,
}

impl Lanes {
    pub(crate) fn new() -> Lanes {
        let (sender, receiver) = mpsc::channel(QUEUE);
        Lanes {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
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
        if self.sender.send(Op::Bind(route, tx)).await.is_err() {
            return Err(mprpc::Error::Unavailable("gateway is stopping"));
        }
        rx.await
            .unwrap_or(Err(mprpc::Error::Unavailable("gateway is stopping")))
    }

    /// Unbinds `user`'s `device` unless another connection of it is still here.
    pub(crate) async fn unbind(&self, user: u64, device: String) {
        let _ = self.sender.send(Op::Unbind { user, device }).await;
    }
}

/// Runs the lanes until `stop` and then until every queued operation is done.
pub(crate) async fn run_lanes(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(mut rx) = shared.lanes.receiver.lock().take() else {
        return;
    };
    // Per device with a call running: the operations that wait for it, in order.
    let mut waiting: HashMap<(u64, String), VecDeque<Op>> = HashMap::new();
    let mut running = FuturesUnordered::new();
    let (mut open, mut closing) = (true, false);
    loop {
        tokio::select! {
            op = rx.recv(), if open && running.len() < MAX_CALLS => match op {
                Some(op) => {
                    let key = op.key();
                    match waiting.get_mut(&key) {
                        Some(queue) => queue.push_back(op),
                        None => {
                            waiting.insert(key.clone(), VecDeque::new());
                            running.push(run(&shared, key, op));
                        }
                    }
                }
                None => open = false,
            },
            Some(key) = running.next(), if !running.is_empty() => {
                let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                match next {
                    Some(op) => running.push(run(&shared, key, op)),
                    None => {
                        waiting.remove(&key);
                    }
                }
            }
            () = stop.cancelled(), if !closing => {
                // Connections have closed by now: what is queued is all there will be.
                rx.close();
                closing = true;
            }
            else => return,
        }
    }
}

/// Applies `op`; returns its key, for the next operation of that device.
async fn run(shared: &Shared, key: (u64, String), op: Op) -> (u64, String) {
    apply(shared, op).await;
    key
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
