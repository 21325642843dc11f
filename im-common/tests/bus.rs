//! The bus contract, one scenario at a time, run against the in-process bus, against
//! Redis (a bus of its own per test, on the server at `TEST_REDIS_URL`, default
//! 127.0.0.1:6379) and against a Redis Cluster (the nodes in `TEST_REDIS_CLUSTER`,
//! comma-separated; when it is unset those tests fail under `TEST_STRICT` and otherwise
//! pass with a note). The Redis-only tests at the end run on both deployments too.
//!
//! Expiry is real time on both backends: ttls are a few hundred milliseconds and the tests
//! poll for their effect under a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use bytes::Bytes;
use im_common::StoreError;
use im_common::bus::redis::Redis;
use im_common::bus::{Bus, ReadFrom, StreamEntry, delivery_stream, read_through, testing};
use im_common::config::RedisConfig;
use im_common::ids::now_ms;
use im_common::proto::{DeviceKind, Route};
use tokio::sync::mpsc;

/// Long enough for any check on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);
const LONG_TTL: Duration = Duration::from_secs(60);
const SHORT_TTL: Duration = Duration::from_millis(300);

im_common::on_every_bus!(
    bind_query_unbind,
    heartbeat_keeps_routes,
    heartbeat_says_whether_the_gateway_was_known,
    lapsed_gateway_is_hidden_then_swept,
    many_users_in_one_query,
    streams_keep_entries_until_acked,
    read_blocks_until_a_push,
    streams_are_independent,
    a_removed_stream_starts_again_empty,
    streams_of_long_dead_gateways_go,
    subscribers_get_what_follows,
    cache_set_get_expire_delete,
    cache_set_if_absent_keeps_what_is_there,
    cache_fill_loses_to_an_invalidation,
    a_read_through_that_began_before_an_invalidation_does_not_fill,
    counters_count_within_their_window,
);

fn route(user: u64, device: &str, kind: DeviceKind, gateway: &str) -> Route {
    Route {
        user_id: user,
        device_id: device.to_owned(),
        device_kind: kind as i32,
        gateway_id: gateway.to_owned(),
    }
}

async fn query(bus: &Bus, users: &[u64]) -> Vec<Route> {
    let mut routes = bus.routes.query(users.to_vec()).await.unwrap();
    routes.sort_by(|a, b| (a.user_id, &a.device_id).cmp(&(b.user_id, &b.device_id)));
    routes
}

async fn online(bus: &Bus, user: u64) -> (bool, i64) {
    let status = bus.routes.status(vec![user]).await.unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].user_id, user);
    (status[0].online, status[0].last_seen_ms)
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bind_query_unbind(bus: Bus) {
    let phone = route(1, "phone", DeviceKind::Mobile, "gw-a");
    let laptop = route(1, "laptop", DeviceKind::Desktop, "gw-b");
    let web = route(2, "web", DeviceKind::Web, "gw-a");
    for r in [&phone, &laptop, &web] {
        bus.routes.bind(r.clone(), LONG_TTL).await.unwrap();
    }
    assert_eq!(
        query(&bus, &[1, 2, 3]).await,
        vec![laptop.clone(), phone.clone(), web.clone()]
    );
    assert!(query(&bus, &[3]).await.is_empty());
    assert!(query(&bus, &[]).await.is_empty());

    // The phone reconnects through gw-b; gw-a's late unbind leaves it there.
    let moved = route(1, "phone", DeviceKind::Mobile, "gw-b");
    bus.routes.bind(moved.clone(), LONG_TTL).await.unwrap();
    bus.routes
        .unbind(1, "phone".into(), "gw-a".into())
        .await
        .unwrap();
    assert_eq!(query(&bus, &[1]).await, vec![laptop.clone(), moved.clone()]);

    bus.routes
        .unbind(1, "phone".into(), "gw-b".into())
        .await
        .unwrap();
    assert_eq!(query(&bus, &[1]).await, vec![laptop.clone()]);
    let before = now_ms();
    let (is_online, seen) = online(&bus, 1).await;
    assert!(is_online);
    assert!(
        seen >= before,
        "an online user is seen now: {seen} < {before}"
    );
    assert_eq!(online(&bus, 3).await, (false, 0), "never seen");

    bus.routes
        .unbind(1, "laptop".into(), "gw-b".into())
        .await
        .unwrap();
    let (is_online, seen) = online(&bus, 1).await;
    assert!(!is_online);
    assert!(
        (before..=now_ms()).contains(&seen),
        "last seen when the last device went: {seen}"
    );
    assert!(online(&bus, 2).await.0, "other users untouched");

    let statuses = bus.routes.status(vec![2, 1, 3]).await.unwrap();
    let order: Vec<(u64, bool)> = statuses.iter().map(|s| (s.user_id, s.online)).collect();
    assert_eq!(
        order,
        vec![(2, true), (1, false), (3, false)],
        "in the order asked"
    );
}

async fn heartbeat_says_whether_the_gateway_was_known(bus: Bus) {
    let routes = &bus.routes;
    // A bind alone does not make the gateway known: after a flush, one login must not hide
    // that the gateway's other routes are gone.
    let bound = route(7, "phone", DeviceKind::Mobile, "gw-known");
    routes.bind(bound, LONG_TTL).await.unwrap();
    assert!(
        !routes.heartbeat("gw-known".into(), LONG_TTL).await.unwrap(),
        "first beat"
    );
    assert!(
        routes.heartbeat("gw-known".into(), LONG_TTL).await.unwrap(),
        "next beat"
    );
    // A gateway whose beats lapsed is not known at its next beat.
    let lapsing = route(8, "phone", DeviceKind::Mobile, "gw-lapsing");
    routes.bind(lapsing.clone(), SHORT_TTL).await.unwrap();
    routes
        .heartbeat("gw-lapsing".into(), SHORT_TTL)
        .await
        .unwrap();
    let start = Instant::now();
    while query(&bus, &[8]).await.contains(&lapsing) {
        assert!(start.elapsed() < DEADLINE, "the route never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The route lapses with the beat's ttl (both were set together): poll the beat too.
    while routes
        .heartbeat("gw-lapsing".into(), Duration::from_millis(1))
        .await
        .unwrap()
    {
        assert!(start.elapsed() < DEADLINE, "the beat never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn heartbeat_keeps_routes(bus: Bus) {
    let start = Instant::now();
    let kept = route(1, "phone", DeviceKind::Mobile, "gw-beating");
    let lapsing = route(2, "phone", DeviceKind::Mobile, "gw-silent");
    bus.routes.bind(kept.clone(), SHORT_TTL).await.unwrap();
    bus.routes.bind(lapsing.clone(), SHORT_TTL).await.unwrap();
    loop {
        // A longer ttl than the bind's, so that a stalled loop on a busy machine does not
        // lapse the gateway between two beats.
        bus.routes
            .heartbeat("gw-beating".into(), SHORT_TTL * 4)
            .await
            .unwrap();
        let routes = query(&bus, &[1, 2]).await;
        assert!(
            routes.contains(&kept),
            "a heartbeating gateway's route was lost"
        );
        if !routes.contains(&lapsing) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the silent gateway never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        start.elapsed() >= SHORT_TTL,
        "lapsed before its ttl: {:?}",
        start.elapsed()
    );
    assert!(online(&bus, 1).await.0);
    assert!(!online(&bus, 2).await.0);
}

async fn lapsed_gateway_is_hidden_then_swept(bus: Bus) {
    let dead_phone = route(1, "phone", DeviceKind::Mobile, "gw-dead");
    let live_laptop = route(1, "laptop", DeviceKind::Desktop, "gw-live");
    let dead_web = route(2, "web", DeviceKind::Web, "gw-dead");
    bus.routes
        .bind(dead_phone.clone(), SHORT_TTL)
        .await
        .unwrap();
    bus.routes.bind(dead_web.clone(), SHORT_TTL).await.unwrap();
    bus.routes
        .bind(live_laptop.clone(), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(bus.routes.sweep().await.unwrap(), 0, "nothing lapsed yet");
    assert_eq!(query(&bus, &[1, 2]).await.len(), 3);

    until("gw-dead lapses", || async {
        query(&bus, &[2]).await.is_empty()
    })
    .await;
    assert_eq!(query(&bus, &[1, 2]).await, vec![live_laptop.clone()]);
    assert!(!online(&bus, 2).await.0);
    assert!(online(&bus, 1).await.0);

    let before = now_ms();
    assert_eq!(bus.routes.sweep().await.unwrap(), 2);
    assert_eq!(bus.routes.sweep().await.unwrap(), 0, "swept once");
    let (is_online, seen) = online(&bus, 2).await;
    assert!(!is_online);
    assert!(
        (before..=now_ms()).contains(&seen),
        "the sweep records when user 2 was last seen: {seen}"
    );
    assert!(online(&bus, 1).await.0, "user 1 still has gw-live");

    // A swept gateway that comes back has to bind its routes again.
    bus.routes
        .heartbeat("gw-dead".into(), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(query(&bus, &[1, 2]).await, vec![live_laptop.clone()]);
    bus.routes.bind(dead_web.clone(), LONG_TTL).await.unwrap();
    assert_eq!(query(&bus, &[2]).await, vec![dead_web]);
}

async fn many_users_in_one_query(bus: Bus) {
    let users: Vec<u64> = (1..=500).collect();
    for &user in &users {
        let gateway = format!("gw-{}", user % 7);
        let kind = DeviceKind::Terminal;
        bus.routes
            .bind(route(user, "d", kind, &gateway), LONG_TTL)
            .await
            .unwrap();
    }
    let mut asked = users.clone();
    asked.extend(1000..1500);
    let routes = query(&bus, &asked).await;
    assert_eq!(routes.len(), 500);
    assert!(routes.iter().zip(&users).all(|(r, &u)| r.user_id == u));
    let statuses = bus.routes.status(asked).await.unwrap();
    assert_eq!(statuses.iter().filter(|s| s.online).count(), 500);
}

fn payloads(entries: &[StreamEntry]) -> Vec<&[u8]> {
    entries.iter().map(|e| e.payload.as_ref()).collect()
}

fn ids(entries: &[StreamEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

async fn read(bus: &Bus, stream: &str, from: ReadFrom, max: usize) -> Vec<StreamEntry> {
    bus.streams
        .read(stream.into(), "gw-1".into(), from, max, Duration::ZERO)
        .await
        .unwrap()
}

async fn streams_keep_entries_until_acked(bus: Bus) {
    let stream = delivery_stream("gw-1");
    let mut pushed = Vec::new();
    for i in 0..5 {
        let payload = Bytes::from(format!("m{i}\0"));
        pushed.push(bus.streams.push(stream.clone(), payload).await.unwrap());
    }
    let first = read(&bus, &stream, ReadFrom::New, 3).await;
    assert_eq!(payloads(&first), [b"m0\0", b"m1\0", b"m2\0"]);
    assert_eq!(ids(&first), pushed[..3]);
    let rest = read(&bus, &stream, ReadFrom::New, 10).await;
    assert_eq!(payloads(&rest), [b"m3\0", b"m4\0"]);
    assert!(read(&bus, &stream, ReadFrom::New, 10).await.is_empty());

    bus.streams
        .ack(stream.clone(), vec![pushed[0].clone(), pushed[3].clone()])
        .await
        .unwrap();
    // As after a restart: what was read and not acknowledged comes back, in order.
    for _ in 0..2 {
        let pending = read(&bus, &stream, ReadFrom::Pending, 10).await;
        assert_eq!(payloads(&pending), [b"m1\0", b"m2\0", b"m4\0"]);
    }
    assert_eq!(read(&bus, &stream, ReadFrom::Pending, 2).await.len(), 2);
    assert!(read(&bus, &stream, ReadFrom::New, 10).await.is_empty());

    let unacked = vec![pushed[1].clone(), pushed[2].clone(), pushed[4].clone()];
    bus.streams.ack(stream.clone(), unacked).await.unwrap();
    bus.streams.ack(stream.clone(), Vec::new()).await.unwrap();
    assert!(read(&bus, &stream, ReadFrom::Pending, 10).await.is_empty());
    assert!(read(&bus, &stream, ReadFrom::New, 10).await.is_empty());

    bus.streams
        .push(stream.clone(), Bytes::from_static(b"later"))
        .await
        .unwrap();
    let later = read(&bus, &stream, ReadFrom::New, 10).await;
    assert_eq!(
        payloads(&later),
        [b"later"],
        "acknowledged entries never again"
    );
}

async fn read_blocks_until_a_push(bus: Bus) {
    let stream = delivery_stream("gw-blocking");
    let start = Instant::now();
    let nothing = bus
        .streams
        .read(
            stream.clone(),
            "gw-1".into(),
            ReadFrom::New,
            10,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert!(nothing.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "returned before its block time: {:?}",
        start.elapsed()
    );

    let reader = tokio::spawn({
        let bus = bus.clone();
        let stream = stream.clone();
        async move {
            bus.streams
                .read(stream, "gw-1".into(), ReadFrom::New, 10, DEADLINE * 3)
                .await
        }
    });
    bus.streams
        .push(stream.clone(), Bytes::from_static(b"wake"))
        .await
        .unwrap();
    let entries = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the blocked reader saw the push")
        .unwrap()
        .unwrap();
    assert_eq!(payloads(&entries), [b"wake"]);

    // Other commands are not held up while a reader blocks.
    let blocked = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.streams
                .read(stream, "gw-1".into(), ReadFrom::New, 10, DEADLINE * 3)
                .await
        }
    });
    let start = Instant::now();
    for i in 0..20 {
        bus.cache
            .set(format!("k{i}"), Bytes::from_static(b"v"), LONG_TTL)
            .await
            .unwrap();
    }
    assert!(start.elapsed() < DEADLINE);
    blocked.abort();
}

async fn streams_are_independent(bus: Bus) {
    let a = delivery_stream("gw-a");
    let b = delivery_stream("gw-b");
    for payload in ["a1", "a2"] {
        bus.streams.push(a.clone(), payload.into()).await.unwrap();
    }
    bus.streams.push(b.clone(), "b1".into()).await.unwrap();
    let from_a = read(&bus, &a, ReadFrom::New, 10).await;
    assert_eq!(payloads(&from_a), [b"a1", b"a2"]);
    let from_b = read(&bus, &b, ReadFrom::New, 10).await;
    assert_eq!(payloads(&from_b), [b"b1"]);
    bus.streams.ack(a.clone(), ids(&from_a)).await.unwrap();
    assert!(read(&bus, &a, ReadFrom::Pending, 10).await.is_empty());
    let pending_b = read(&bus, &b, ReadFrom::Pending, 10).await;
    assert_eq!(payloads(&pending_b), [b"b1"], "acks on a do not touch b");
}

async fn a_removed_stream_starts_again_empty(bus: Bus) {
    let stream = delivery_stream("gw-removed");
    for payload in ["m1", "m2"] {
        bus.streams
            .push(stream.clone(), payload.into())
            .await
            .unwrap();
    }
    assert_eq!(read(&bus, &stream, ReadFrom::New, 1).await.len(), 1);
    assert!(bus.streams.remove(stream.clone()).await.unwrap());
    assert!(!bus.streams.remove(stream.clone()).await.unwrap(), "gone");
    assert!(
        read(&bus, &stream, ReadFrom::Pending, 10).await.is_empty(),
        "pending entries go with the stream"
    );
    assert!(read(&bus, &stream, ReadFrom::New, 10).await.is_empty());
    bus.streams.push(stream.clone(), "m3".into()).await.unwrap();
    let fresh = read(&bus, &stream, ReadFrom::New, 10).await;
    assert_eq!(payloads(&fresh), [b"m3"]);
}

/// How long [`streams_of_long_dead_gateways_go`] wants a gateway silent: far above the
/// time its checks take, so that a gateway that lapsed just before is surely not dead yet.
const DEAD_AFTER: Duration = Duration::from_secs(2);

/// The gateways dead for `older_than`, sorted.
async fn dead(bus: &Bus, older_than: Duration) -> Vec<String> {
    let mut dead = bus.routes.dead_since(older_than).await.unwrap();
    dead.sort();
    dead
}

async fn streams_of_long_dead_gateways_go(bus: Bus) {
    let (routes, streams) = (&bus.routes, &bus.streams);
    // gw-gone binds, beats and stays silent; gw-back beats, lapses and beats again; gw-bound
    // only ever binds; gw-recent beats last, once, briefly.
    let gone = route(1, "phone", DeviceKind::Mobile, "gw-gone");
    let bound = route(2, "phone", DeviceKind::Mobile, "gw-bound");
    routes.bind(bound, SHORT_TTL).await.unwrap();
    routes.bind(gone, SHORT_TTL).await.unwrap();
    for gateway in ["gw-gone", "gw-back"] {
        routes.heartbeat(gateway.into(), SHORT_TTL).await.unwrap();
    }
    for gateway in ["gw-gone", "gw-back", "gw-bound", "gw-recent"] {
        let stream = delivery_stream(gateway);
        streams.push(stream, gateway.into()).await.unwrap();
    }
    until("gw-gone and gw-back lapse", || async {
        dead(&bus, Duration::ZERO).await == ["gw-back", "gw-gone"]
    })
    .await;
    // The sweep takes routes, not last beats; a gateway that only bound counts as seen now.
    assert_eq!(routes.sweep().await.unwrap(), 2);
    assert_eq!(
        dead(&bus, Duration::ZERO).await,
        ["gw-back", "gw-bound", "gw-gone"]
    );
    // gw-back is back, and beats as a live gateway does.
    until("gw-gone and gw-bound are dead for DEAD_AFTER", || async {
        routes.heartbeat("gw-back".into(), LONG_TTL).await.unwrap();
        dead(&bus, DEAD_AFTER).await == ["gw-bound", "gw-gone"]
    })
    .await;
    routes
        .heartbeat("gw-recent".into(), Duration::from_millis(1))
        .await
        .unwrap();
    until("gw-recent lapses", || async {
        dead(&bus, Duration::ZERO)
            .await
            .contains(&"gw-recent".to_owned())
    })
    .await;
    assert_eq!(
        dead(&bus, DEAD_AFTER).await,
        ["gw-bound", "gw-gone"],
        "neither a gateway that came back nor one that lapsed lately"
    );

    // What the presence sweeper does with them.
    for gateway in ["gw-bound", "gw-gone"] {
        assert!(streams.remove(delivery_stream(gateway)).await.unwrap());
        assert!(
            routes
                .forget_dead(gateway.into(), DEAD_AFTER)
                .await
                .unwrap()
        );
    }
    assert_eq!(dead(&bus, Duration::ZERO).await, ["gw-recent"], "forgotten");
    for gateway in ["gw-back", "gw-recent"] {
        let forgot = routes
            .forget_dead(gateway.into(), DEAD_AFTER)
            .await
            .unwrap();
        assert!(!forgot, "{gateway} beat within DEAD_AFTER");
        let pending = read(&bus, &delivery_stream(gateway), ReadFrom::New, 10).await;
        assert_eq!(
            payloads(&pending),
            [gateway.as_bytes()],
            "{gateway} keeps its stream"
        );
    }
    for gateway in ["gw-bound", "gw-gone"] {
        let stream = delivery_stream(gateway);
        assert!(read(&bus, &stream, ReadFrom::New, 10).await.is_empty());
    }
    // One that comes back after all is alive, and not dead again until it lapses.
    routes.heartbeat("gw-gone".into(), LONG_TTL).await.unwrap();
    assert_eq!(dead(&bus, Duration::ZERO).await, ["gw-recent"]);
}

async fn recv(rx: &mut mpsc::Receiver<Bytes>) -> Bytes {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a published event arrives")
        .expect("the subscription is open")
}

/// The next event, passing over those published while the channel had no receiver: on a
/// Redis Cluster the node a subscription lands on may hear those later than the node they
/// were published on (the cluster bus forwards asynchronously). Anything else that was
/// published before the subscription fails the test.
async fn recv_after(rx: &mut mpsc::Receiver<Bytes>, unheard: &str) -> Bytes {
    loop {
        let event = recv(rx).await;
        if event != unheard {
            return event;
        }
    }
}

async fn subscribers_get_what_follows(bus: Bus) {
    let channel = "mpim:events:test".to_owned();
    let publish = |payload: &'static str| bus.pubsub.publish(channel.clone(), payload.into());
    publish("before anyone listened").await.unwrap();

    let mut first = bus.pubsub.subscribe(channel.clone()).await.unwrap();
    publish("one").await.unwrap();
    publish("two").await.unwrap();
    assert_eq!(
        recv_after(&mut first, "before anyone listened").await,
        "one"
    );
    assert_eq!(recv(&mut first).await, "two");

    let mut second = bus.pubsub.subscribe(channel.clone()).await.unwrap();
    bus.pubsub
        .publish("mpim:events:other".into(), "elsewhere".into())
        .await
        .unwrap();
    publish("three").await.unwrap();
    assert_eq!(recv(&mut first).await, "three");
    assert_eq!(recv(&mut second).await, "three");

    drop(first);
    publish("four").await.unwrap();
    assert_eq!(recv(&mut second).await, "four");

    drop(second);
    publish("to nobody").await.unwrap();
    let mut third = bus.pubsub.subscribe(channel.clone()).await.unwrap();
    publish("five").await.unwrap();
    assert_eq!(
        recv_after(&mut third, "to nobody").await,
        "five",
        "nothing from before it subscribed"
    );
}

async fn cache_set_get_expire_delete(bus: Bus) {
    let cache = &bus.cache;
    assert_eq!(cache.get("k1".into()).await.unwrap(), None);
    cache.set("k1".into(), "v1".into(), LONG_TTL).await.unwrap();
    assert_eq!(cache.get("k1".into()).await.unwrap().unwrap(), "v1");
    let binary = Bytes::from_static(b"\0\xff\x01");
    cache
        .set("k1".into(), binary.clone(), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(cache.get("k1".into()).await.unwrap(), Some(binary));

    cache
        .set("brief".into(), "x".into(), SHORT_TTL)
        .await
        .unwrap();
    cache.set("k2".into(), "v2".into(), LONG_TTL).await.unwrap();
    let start = Instant::now();
    until("the brief value expires", || async {
        cache.get("brief".into()).await.unwrap().is_none()
    })
    .await;
    assert!(start.elapsed() < DEADLINE);

    cache
        .delete(vec!["k1".into(), "missing".into()])
        .await
        .unwrap();
    cache.delete(Vec::new()).await.unwrap();
    assert_eq!(cache.get("k1".into()).await.unwrap(), None);
    assert_eq!(cache.get("k2".into()).await.unwrap().unwrap(), "v2");
}

async fn cache_set_if_absent_keeps_what_is_there(bus: Bus) {
    let cache = &bus.cache;
    assert!(
        cache
            .set_if_absent("s".into(), "first".into(), LONG_TTL)
            .await
            .unwrap()
    );
    assert!(
        !cache
            .set_if_absent("s".into(), "second".into(), LONG_TTL)
            .await
            .unwrap()
    );
    assert_eq!(cache.get("s".into()).await.unwrap().unwrap(), "first");
    // An expired value is absent.
    cache
        .set("gone".into(), "x".into(), SHORT_TTL)
        .await
        .unwrap();
    until("the brief value expires", || async {
        cache.get("gone".into()).await.unwrap().is_none()
    })
    .await;
    assert!(
        cache
            .set_if_absent("gone".into(), "y".into(), LONG_TTL)
            .await
            .unwrap()
    );
    cache.delete(vec!["s".into(), "gone".into()]).await.unwrap();
}

/// The Redis deployments the Redis-only tests below run on.
#[derive(Debug, Clone, Copy)]
enum Deployment {
    /// The server at `TEST_REDIS_URL`.
    Single,
    /// The cluster at `TEST_REDIS_CLUSTER`.
    Cluster,
}

impl Deployment {
    /// A bus with a prefix of its own; None for a cluster when there is none to test on
    /// (a failure under `TEST_STRICT`: [`testing::prerequisite`]).
    async fn redis(self) -> Option<Arc<Redis>> {
        match self {
            Deployment::Single => Some(testing::redis().await.unwrap()),
            Deployment::Cluster => Some(testing::redis_cluster().await?.unwrap()),
        }
    }

    /// Plain connections to each node (commands that see one node only: PUBSUB, CLIENT).
    async fn nodes(self) -> Vec<MultiplexedConnection> {
        let urls = match self {
            Deployment::Single => vec![testing::redis_url()],
            Deployment::Cluster => testing::redis_cluster_nodes().unwrap_or_default(),
        };
        let mut nodes = Vec::new();
        for url in urls {
            let client = ::redis::Client::open(url).unwrap();
            nodes.push(client.get_multiplexed_async_connection().await.unwrap());
        }
        nodes
    }

    /// The `[redis]` section that reaches this deployment under `prefix`.
    fn config(self, prefix: &str) -> RedisConfig {
        let mut config = RedisConfig {
            prefix: prefix.to_owned(),
            ..RedisConfig::default()
        };
        match self {
            Deployment::Single => config.url = Some(testing::redis_url()),
            Deployment::Cluster => {
                config.cluster = testing::redis_cluster_nodes().unwrap_or_default()
            }
        }
        config
    }
}

/// Each `async fn scenario(deployment: Deployment)` as the tests `<name>::single` and
/// `<name>::cluster`.
macro_rules! on_both_deployments {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn single() {
                    super::$name(super::Deployment::Single).await;
                }
                #[tokio::test]
                async fn cluster() {
                    super::$name(super::Deployment::Cluster).await;
                }
            }
        )*
    };
}

on_both_deployments!(
    prefixes_never_meet,
    subscription_ends_with_its_receivers,
    connect_follows_the_config,
    subscriptions_survive_a_lost_connection,
);

async fn prefixes_never_meet(deployment: Deployment) {
    let Some(one) = deployment.redis().await else {
        return;
    };
    let two = deployment.redis().await.unwrap();
    let (bus_one, bus_two) = (Bus::new(one.clone()), Bus::new(two.clone()));
    bus_one
        .cache
        .set("k".into(), "one".into(), LONG_TTL)
        .await
        .unwrap();
    bus_two
        .cache
        .set("k".into(), "two".into(), LONG_TTL)
        .await
        .unwrap();
    let gw = route(1, "d", DeviceKind::Web, "gw");
    bus_one.routes.bind(gw.clone(), LONG_TTL).await.unwrap();
    bus_one.streams.push("s".into(), "x".into()).await.unwrap();
    // Keys enough to be on every node of a cluster.
    for i in 0..30 {
        let key = format!("many:{i}");
        bus_one.cache.set(key, "x".into(), LONG_TTL).await.unwrap();
    }
    assert!(query(&bus_two, &[1]).await.is_empty());

    // Clearing a bus is a flushed Redis, for that bus only.
    assert!(one.clear().await.unwrap() >= 33);
    assert_eq!(bus_one.cache.get("k".into()).await.unwrap(), None);
    assert_eq!(bus_one.cache.get("many:7".into()).await.unwrap(), None);
    assert!(query(&bus_one, &[1]).await.is_empty());
    assert!(read(&bus_one, "s", ReadFrom::New, 10).await.is_empty());
    assert_eq!(bus_two.cache.get("k".into()).await.unwrap().unwrap(), "two");
    one.clear().await.unwrap();
    two.clear().await.unwrap();
}

/// How many connections listen on `channel` (unprefixed: the caller gives the full name),
/// over every node.
async fn listeners(nodes: &[MultiplexedConnection], channel: &str) -> u64 {
    let mut total = 0;
    for node in nodes {
        let (_, count): (String, u64) = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut node.clone())
            .await
            .unwrap();
        total += count;
    }
    total
}

async fn subscription_ends_with_its_receivers(deployment: Deployment) {
    let Some(redis) = deployment.redis().await else {
        return;
    };
    let bus = Bus::new(redis.clone());
    let name = "mpim:events:ending";
    let channel = format!("{}{name}", redis.prefix());
    let nodes = deployment.nodes().await;

    let first = bus.pubsub.subscribe(name.into()).await.unwrap();
    let mut second = bus.pubsub.subscribe(name.into()).await.unwrap();
    assert_eq!(
        listeners(&nodes, &channel).await,
        1,
        "one connection for both"
    );
    drop(first);
    bus.pubsub.publish(name.into(), "x".into()).await.unwrap();
    assert_eq!(recv(&mut second).await, "x");
    assert_eq!(
        listeners(&nodes, &channel).await,
        1,
        "the second still listens"
    );
    drop(second);
    until("the subscription ends", || async {
        listeners(&nodes, &channel).await == 0
    })
    .await;

    // A later subscriber starts over.
    let mut third = bus.pubsub.subscribe(name.into()).await.unwrap();
    bus.pubsub.publish(name.into(), "y".into()).await.unwrap();
    assert_eq!(recv(&mut third).await, "y");
    redis.clear().await.unwrap();
}

async fn connect_follows_the_config(deployment: Deployment) {
    let local = Bus::connect(&RedisConfig::default()).await.unwrap();
    local
        .cache
        .set("k".into(), "v".into(), LONG_TTL)
        .await
        .unwrap();
    assert!(local.cache.get("k".into()).await.unwrap().is_some());
    if matches!(deployment, Deployment::Cluster) && testing::redis_cluster_nodes().is_none() {
        return;
    }

    let remote = Bus::connect(&deployment.config("")).await.unwrap();
    let missing = remote.cache.get("mpim:cache:none-such".into()).await;
    assert_eq!(missing.unwrap(), None);
    // Deployments with their own prefixes share a server without meeting.
    let run = format!("test:{}:{}:", std::process::id(), rand::random::<u32>());
    let one = Bus::connect(&deployment.config(&format!("{run}one:")))
        .await
        .unwrap();
    let two = Bus::connect(&deployment.config(&format!("{run}two:")))
        .await
        .unwrap();
    one.cache
        .set("k".into(), "1".into(), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(two.cache.get("k".into()).await.unwrap(), None);
    assert_eq!(
        one.cache.get("k".into()).await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    one.cache.delete(vec!["k".into()]).await.unwrap();

    let mut bad = deployment.config("");
    match deployment {
        Deployment::Single => bad.url = Some("rediss-or-not://127.0.0.1".into()),
        Deployment::Cluster => bad.cluster = vec!["rediss-or-not://127.0.0.1".into()],
    }
    let err = Bus::connect(&bad).await.unwrap_err();
    assert!(matches!(err, StoreError::Redis(_)), "{err}");
    let mut both = deployment.config("");
    both.url = Some(testing::redis_url());
    both.cluster = vec![testing::redis_url()];
    let err = Bus::connect(&both).await.unwrap_err();
    assert!(err.to_string().contains("both"), "{err}");
    let err = Bus::connect(&deployment.config("a{b}:")).await.unwrap_err();
    assert!(err.to_string().contains("prefix"), "{err}");
}

/// The ids of the pub/sub connections that listen on exactly `channels` channels, with the
/// node each is on.
async fn pubsub_clients(nodes: &[MultiplexedConnection], channels: usize) -> Vec<(usize, u64)> {
    let wanted = format!("sub={channels}");
    let mut found = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let list: String = ::redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut node.clone())
            .await
            .unwrap();
        found.extend(
            list.lines()
                .filter(|line| line.split(' ').any(|field| field == wanted))
                .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
                .map(|id| (index, id)),
        );
    }
    found
}

async fn subscriptions_survive_a_lost_connection(deployment: Deployment) {
    let Some(redis) = deployment.redis().await else {
        return;
    };
    let bus = Bus::new(redis.clone());
    let nodes = deployment.nodes().await;
    // Seven channels on one connection set it apart from any other test's. On a cluster
    // their slots are spread over the nodes, and one connection to one node hears them all.
    const CHANNELS: usize = 7;
    let before = pubsub_clients(&nodes, CHANNELS).await;
    let mut receivers = Vec::new();
    for i in 0..CHANNELS {
        receivers.push(bus.pubsub.subscribe(format!("ch{i}")).await.unwrap());
    }
    let ours: Vec<(usize, u64)> = pubsub_clients(&nodes, CHANNELS)
        .await
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(ours.len(), 1, "one connection for all channels: {ours:?}");
    let (node, id) = ours[0];
    let killed: u64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut nodes[node].clone())
        .await
        .unwrap();
    assert_eq!(killed, 1);

    // Reconnected and subscribed again: publishing (again, as events in the gap are lost)
    // reaches every receiver.
    for (i, rx) in receivers.iter_mut().enumerate() {
        let start = Instant::now();
        loop {
            bus.pubsub
                .publish(format!("ch{i}"), "back".into())
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(Some(payload)) => {
                    assert_eq!(payload, "back");
                    break;
                }
                Ok(None) => panic!("a lost connection closed the subscription"),
                Err(_) => assert!(start.elapsed() < DEADLINE, "never resubscribed"),
            }
        }
    }
    redis.clear().await.unwrap();
}

async fn cache_fill_loses_to_an_invalidation(bus: Bus) {
    let cache = &bus.cache;
    // A reader takes its token and reads the old list; a writer commits and invalidates;
    // the reader's fill comes last and is refused.
    let early = cache.fill_token("members".into()).await.unwrap();
    cache.delete(vec!["members".into()]).await.unwrap();
    assert!(
        !cache
            .fill("members".into(), early, "old".into(), LONG_TTL)
            .await
            .unwrap()
    );
    assert_eq!(cache.get("members".into()).await.unwrap(), None);

    // A reader that began after the invalidation fills.
    let late = cache.fill_token("members".into()).await.unwrap();
    assert!(
        cache
            .fill("members".into(), late, "new".into(), LONG_TTL)
            .await
            .unwrap()
    );
    assert_eq!(cache.get("members".into()).await.unwrap().unwrap(), "new");

    // Invalidating another key refuses nothing here; a second invalidation refuses the
    // token taken between the two, even on a key that holds a value again.
    cache.delete(vec!["other".into()]).await.unwrap();
    assert!(
        cache
            .fill("members".into(), late, "new".into(), LONG_TTL)
            .await
            .unwrap()
    );
    cache.delete(vec!["members".into()]).await.unwrap();
    assert!(
        !cache
            .fill("members".into(), late, "stale".into(), LONG_TTL)
            .await
            .unwrap()
    );
    assert_eq!(cache.get("members".into()).await.unwrap(), None);
    // A key never invalidated fills from any token.
    let fresh = cache.fill_token("never".into()).await.unwrap();
    assert!(
        cache
            .fill("never".into(), fresh, "v".into(), LONG_TTL)
            .await
            .unwrap()
    );
}

async fn a_read_through_that_began_before_an_invalidation_does_not_fill(bus: Bus) {
    let cache = bus.cache.as_ref();
    let decode = |bytes: Bytes| Some(String::from_utf8(bytes.to_vec()).unwrap());
    let encode = |value: &String| Bytes::from(value.clone());
    // The reader stops between its database read and its fill until the writer's
    // invalidation ran: the interleaving of the race, forced.
    let (read_done, mut read_seen) = mpsc::channel::<()>(1);
    let (go_on, mut may_go_on) = mpsc::channel::<()>(1);
    let reader = read_through(
        cache,
        "blocked:7".into(),
        LONG_TTL,
        decode,
        encode,
        || async {
            let old = "[]".to_owned();
            read_done.send(()).await.unwrap();
            may_go_on.recv().await.unwrap();
            Ok::<_, StoreError>(old)
        },
    );
    let writer = async {
        read_seen.recv().await.unwrap();
        // The block commits in the database, then invalidates.
        cache.delete(vec!["blocked:7".into()]).await.unwrap();
        go_on.send(()).await.unwrap();
    };
    let (old, ()) = tokio::join!(reader, writer);
    assert_eq!(old.unwrap(), "[]", "the reader itself gets what it read");
    assert_eq!(
        cache.get("blocked:7".into()).await.unwrap(),
        None,
        "the list read before the block was not cached after its invalidation"
    );
    // The next reader reads the database and caches it.
    let now = read_through(
        cache,
        "blocked:7".into(),
        LONG_TTL,
        decode,
        encode,
        || async { Ok::<_, StoreError>("[9]".to_owned()) },
    )
    .await
    .unwrap();
    assert_eq!(now, "[9]");
    let cached = read_through(
        cache,
        "blocked:7".into(),
        LONG_TTL,
        decode,
        encode,
        || async { Ok::<_, StoreError>("unread".to_owned()) },
    )
    .await
    .unwrap();
    assert_eq!(cached, "[9]", "served from the cache");
}

async fn counters_count_within_their_window(bus: Bus) {
    let cache = &bus.cache;
    for expected in 1..=3 {
        assert_eq!(
            cache.count("tries".into(), SHORT_TTL).await.unwrap(),
            expected
        );
    }
    assert_eq!(cache.get("tries".into()).await.unwrap().unwrap(), "3");
    assert_eq!(cache.count("other".into(), LONG_TTL).await.unwrap(), 1);
    // The window runs from the first count, not the last: the counter lapses.
    until("the counter lapses", || async {
        cache.get("tries".into()).await.unwrap().is_none()
    })
    .await;
    assert_eq!(cache.count("tries".into(), LONG_TTL).await.unwrap(), 1);
    cache.delete(vec!["tries".into()]).await.unwrap();
    assert_eq!(cache.count("tries".into(), LONG_TTL).await.unwrap(), 1);
}
