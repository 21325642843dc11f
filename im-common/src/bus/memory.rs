//! The bus inside one process: what `mpim` and server-less tests use.
//!
//! Same contracts as the Redis bus: routes live while their gateway heartbeats, stream
//! entries stay until acknowledged, pub/sub reaches only current subscribers, cached values
//! expire. Each table sits behind its own `parking_lot` mutex, held only for the few map
//! operations of one call and never across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::{BusResult, PubSub, ReadFrom, Routes, StreamEntry, Streams};
use crate::ids::now_ms;
use crate::proto::{Route, UserStatus};

mod cache;

/// Entries a stream keeps before it drops its oldest (as Redis' `MAXLEN`).
const MAX_STREAM_LEN: usize = 100_000;
/// Messages queued per subscriber before further ones are dropped for it.
const SUBSCRIBER_QUEUE: usize = 1024;

/// The in-process bus.
#[derive(Debug, Default)]
pub struct Memory {
    routes: Mutex<RouteTable>,
    streams: Mutex<HashMap<String, Stream>>,
    channels: Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>,
    cache: Mutex<cache::Table>,
}

#[derive(Debug, Default)]
struct RouteTable {
    /// user → device → route.
    users: HashMap<u64, HashMap<String, Route>>,
    /// gateway → when its routes lapse.
    gateways: HashMap<String, Instant>,
    /// gateway → until when its last heartbeat counts (binds do not set this).
    beats: HashMap<String, Instant>,
    /// user → when last seen online (ms), recorded as routes go away.
    last_seen: HashMap<u64, i64>,
    /// gateway → its last heartbeat (or the sweep that found it lapsed without one), kept
    /// past the sweep until `forget_dead`.
    seen: HashMap<String, Instant>,
}

impl RouteTable {
    fn live(&self, gateway: &str, now: Instant) -> bool {
        self.gateways.get(gateway).is_some_and(|&until| until > now)
    }

    /// Whether `gateway` last beat at least `older_than` before `now`.
    fn silent_for(&self, gateway: &str, older_than: Duration, now: Instant) -> bool {
        self.seen
            .get(gateway)
            .is_some_and(|&at| now.saturating_duration_since(at) >= older_than)
    }
}

#[derive(Debug, Default)]
struct Stream {
    next: u64,
    entries: BTreeMap<u64, Bytes>,
    /// The highest id handed to any consumer.
    delivered: u64,
    /// consumer → ids it read and has not acknowledged.
    pending: HashMap<String, BTreeSet<u64>>,
    notify: Arc<Notify>,
}

impl Memory {
    /// An empty bus.
    pub fn new() -> Memory {
        Memory::default()
    }

    fn take(
        &self,
        stream: &str,
        consumer: &str,
        from: ReadFrom,
        max: usize,
    ) -> (Vec<StreamEntry>, Arc<Notify>) {
        let mut streams = self.streams.lock();
        let state = streams.entry(stream.to_owned()).or_default();
        let mut out = Vec::new();
        match from {
            ReadFrom::Pending => {
                let ids = state.pending.get(consumer).cloned().unwrap_or_default();
                for id in ids.into_iter().take(max) {
                    if let Some(payload) = state.entries.get(&id) {
                        out.push(StreamEntry {
                            id: id.to_string(),
                            payload: payload.clone(),
                        });
                    }
                }
            }
            ReadFrom::New => {
                let fresh: Vec<(u64, Bytes)> = state
                    .entries
                    .range(state.delivered + 1..)
                    .take(max)
                    .map(|(id, payload)| (*id, payload.clone()))
                    .collect();
                if let Some((last, _)) = fresh.last() {
                    state.delivered = *last;
                }
                let pending = state.pending.entry(consumer.to_owned()).or_default();
                for (id, payload) in fresh {
                    pending.insert(id);
                    out.push(StreamEntry {
                        id: id.to_string(),
                        payload,
                    });
                }
            }
        }
        (out, state.notify.clone())
    }
}

impl Routes for Memory {
    fn bind(&self, route: Route, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        let mut table = self.routes.lock();
        table
            .gateways
            .insert(route.gateway_id.clone(), Instant::now() + ttl);
        table
            .users
            .entry(route.user_id)
            .or_default()
            .insert(route.device_id.clone(), route);
        drop(table);
        futures::future::ready(Ok(())).boxed()
    }

    fn unbind(&self, user: u64, device: String, gateway: String) -> BoxFuture<'_, BusResult<()>> {
        let mut table = self.routes.lock();
        if let Some(devices) = table.users.get_mut(&user) {
            if devices
                .get(&device)
                .is_some_and(|route| route.gateway_id == gateway)
            {
                devices.remove(&device);
            }
            if devices.is_empty() {
                table.users.remove(&user);
                table.last_seen.insert(user, now_ms());
            }
        }
        drop(table);
        futures::future::ready(Ok(())).boxed()
    }

    fn heartbeat(&self, gateway: String, ttl: Duration) -> BoxFuture<'_, BusResult<bool>> {
        let now = Instant::now();
        let mut table = self.routes.lock();
        table.gateways.insert(gateway.clone(), now + ttl);
        table.seen.insert(gateway.clone(), now);
        let known = table
            .beats
            .insert(gateway, now + ttl)
            .is_some_and(|until| until > now);
        futures::future::ready(Ok(known)).boxed()
    }

    fn query(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<Route>>> {
        let now = Instant::now();
        let table = self.routes.lock();
        let routes = users
            .iter()
            .filter_map(|user| table.users.get(user))
            .flat_map(|devices| devices.values())
            .filter(|route| table.live(&route.gateway_id, now))
            .cloned()
            .collect();
        drop(table);
        futures::future::ready(Ok(routes)).boxed()
    }

    fn status(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<UserStatus>>> {
        let now = Instant::now();
        let table = self.routes.lock();
        let statuses = users
            .into_iter()
            .map(|user_id| {
                let online = table.users.get(&user_id).is_some_and(|devices| {
                    devices
                        .values()
                        .any(|route| table.live(&route.gateway_id, now))
                });
                let last_seen_ms = if online {
                    now_ms()
                } else {
                    table.last_seen.get(&user_id).copied().unwrap_or(0)
                };
                UserStatus {
                    user_id,
                    online,
                    last_seen_ms,
                }
            })
            .collect();
        drop(table);
        futures::future::ready(Ok(statuses)).boxed()
    }

    fn sweep(&self) -> BoxFuture<'_, BusResult<u64>> {
        let now = Instant::now();
        let mut table = self.routes.lock();
        let dead: BTreeSet<String> = table
            .gateways
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(gateway, _)| gateway.clone())
            .collect();
        let mut removed = 0;
        let mut gone = Vec::new();
        for (user, devices) in &mut table.users {
            let before = devices.len();
            devices.retain(|_, route| !dead.contains(&route.gateway_id));
            removed += (before - devices.len()) as u64;
            if devices.is_empty() {
                gone.push(*user);
            }
        }
        let seen = now_ms();
        for user in gone {
            table.users.remove(&user);
            table.last_seen.insert(user, seen);
        }
        for gateway in dead {
            table.gateways.remove(&gateway);
            table.seen.entry(gateway).or_insert(now);
        }
        drop(table);
        futures::future::ready(Ok(removed)).boxed()
    }

    fn dead_since(&self, older_than: Duration) -> BoxFuture<'_, BusResult<Vec<String>>> {
        let now = Instant::now();
        let table = self.routes.lock();
        let dead = table
            .seen
            .keys()
            .filter(|gateway| {
                !table.live(gateway, now) && table.silent_for(gateway, older_than, now)
            })
            .cloned()
            .collect();
        drop(table);
        futures::future::ready(Ok(dead)).boxed()
    }

    fn forget_dead(&self, gateway: String, older_than: Duration) -> BoxFuture<'_, BusResult<bool>> {
        let now = Instant::now();
        let mut table = self.routes.lock();
        let forgot = table.silent_for(&gateway, older_than, now);
        if forgot {
            table.seen.remove(&gateway);
            // Its last beat ran out long ago: forgetting it changes no heartbeat's answer.
            if table.beats.get(&gateway).is_some_and(|&until| until <= now) {
                table.beats.remove(&gateway);
            }
        }
        drop(table);
        futures::future::ready(Ok(forgot)).boxed()
    }
}

impl Streams for Memory {
    fn push(&self, stream: String, payload: Bytes) -> BoxFuture<'_, BusResult<String>> {
        let mut streams = self.streams.lock();
        let state = streams.entry(stream).or_default();
        state.next += 1;
        let id = state.next;
        state.entries.insert(id, payload);
        while state.entries.len() > MAX_STREAM_LEN {
            state.entries.pop_first();
        }
        state.notify.notify_waiters();
        drop(streams);
        futures::future::ready(Ok(id.to_string())).boxed()
    }

    fn read(
        &self,
        stream: String,
        consumer: String,
        from: ReadFrom,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'_, BusResult<Vec<StreamEntry>>> {
        async move {
            let (entries, mut notify) = self.take(&stream, &consumer, from, max);
            if !entries.is_empty() || from == ReadFrom::Pending || block.is_zero() {
                return Ok(entries);
            }
            let deadline = tokio::time::Instant::now() + block;
            loop {
                // Registered before looking, so a push between the look and the wait wakes it.
                let waiting = notify.clone();
                let notified = waiting.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let (entries, current) = self.take(&stream, &consumer, from, max);
                if !entries.is_empty() {
                    return Ok(entries);
                }
                if !Arc::ptr_eq(&current, &notify) {
                    // The stream was removed and started again: wait on the new one.
                    notify = current;
                    continue;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(Vec::new());
                }
            }
        }
        .boxed()
    }

    fn ack(&self, stream: String, ids: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        let mut streams = self.streams.lock();
        if let Some(state) = streams.get_mut(&stream) {
            for id in ids.iter().filter_map(|id| id.parse::<u64>().ok()) {
                state.entries.remove(&id);
                for pending in state.pending.values_mut() {
                    pending.remove(&id);
                }
            }
        }
        drop(streams);
        futures::future::ready(Ok(())).boxed()
    }

    fn remove(&self, stream: String) -> BoxFuture<'_, BusResult<bool>> {
        let removed = self.streams.lock().remove(&stream);
        if let Some(state) = &removed {
            // Blocked readers look again, and find the stream that starts in its place.
            state.notify.notify_waiters();
        }
        futures::future::ready(Ok(removed.is_some())).boxed()
    }
}

impl PubSub for Memory {
    fn publish(&self, channel: String, payload: Bytes) -> BoxFuture<'_, BusResult<()>> {
        let mut channels = self.channels.lock();
        if let Some(subscribers) = channels.get_mut(&channel) {
            // A full subscriber misses this event (events are ephemeral); a gone one is removed.
            subscribers.retain(|tx| match tx.try_send(payload.clone()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if subscribers.is_empty() {
                channels.remove(&channel);
            }
        }
        drop(channels);
        futures::future::ready(Ok(())).boxed()
    }

    fn subscribe(&self, channel: String) -> BoxFuture<'_, BusResult<mpsc::Receiver<Bytes>>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.channels.lock().entry(channel).or_default().push(tx);
        futures::future::ready(Ok(rx)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader blocked on a stream that is removed waits on the stream that starts in its
    /// place (the Redis bus fails such a read instead, and the reader reads again).
    #[tokio::test]
    async fn a_blocked_read_follows_a_removed_stream() {
        let bus = Arc::new(Memory::new());
        let stream = "mpim:delivery:gw".to_owned();
        bus.push(stream.clone(), "old".into()).await.unwrap();
        bus.read(
            stream.clone(),
            "c".into(),
            ReadFrom::New,
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let reader = tokio::spawn({
            let (bus, stream) = (bus.clone(), stream.clone());
            async move {
                let block = Duration::from_secs(600);
                bus.read(stream, "c".into(), ReadFrom::New, 10, block).await
            }
        });
        // The test runtime has one thread: the reader runs until it blocks.
        tokio::task::yield_now().await;
        assert!(bus.remove(stream.clone()).await.unwrap());
        // Woken by the removal, it looks again and finds nothing: it waits anew.
        tokio::task::yield_now().await;
        bus.push(stream, "new".into()).await.unwrap();
        let entries = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader woke")
            .unwrap()
            .unwrap();
        let payloads: Vec<&[u8]> = entries.iter().map(|e| e.payload.as_ref()).collect();
        assert_eq!(payloads, [b"new"]);
    }
}
