//! `PresenceService` through an in-process mprpc client, on the in-process bus, on Redis
//! (a bus of its own per test, on the server at `TEST_REDIS_URL`, default 127.0.0.1:6379)
//! and on a Redis Cluster (at `TEST_REDIS_CLUSTER`; when it is unset those tests fail under
//! `TEST_STRICT` and otherwise pass with a note).

use std::time::{Duration, Instant};

use im_common::bus::{Bus, ReadFrom, channels, delivery_stream};
use im_common::identity::{self, ServiceIdentity, User};
use im_common::proto::{
    DeviceKind, Empty, Event, HeartbeatRequest, PresenceChanged, PresenceServiceClient, Route,
    UnbindRouteRequest, UserIds, event,
};
use im_presence::{Presence, PresenceSettings, Sweeper};
use mprpc::{CallOptions, Client, Code};
use prost::Message;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

im_common::on_every_bus!(
    bind_heartbeat_query_status,
    presence_events_on_first_and_last_device,
    silent_gateway_routes_expire,
    internal_callers_only,
    bad_input_is_invalid_argument,
    the_sweeper_removes_the_streams_of_dead_gateways,
);

fn settings(route_ttl_ms: u64) -> PresenceSettings {
    PresenceSettings {
        route_ttl_ms,
        sweep_interval_ms: 0,
        ..PresenceSettings::default()
    }
}

/// A client, calling as the gateway, of a presence server on `bus`.
fn client(bus: &Bus, settings: PresenceSettings) -> PresenceServiceClient {
    let server = im_presence::server(Presence::new(bus.clone(), settings).unwrap());
    let client = Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(&server);
    PresenceServiceClient::new(client)
}

fn route(user: u64, device: &str, gateway: &str) -> Route {
    Route {
        user_id: user,
        device_id: device.to_owned(),
        device_kind: DeviceKind::Mobile as i32,
        gateway_id: gateway.to_owned(),
    }
}

fn unbind(user: u64, device: &str, gateway: &str) -> UnbindRouteRequest {
    UnbindRouteRequest {
        user_id: user,
        device_id: device.to_owned(),
        gateway_id: gateway.to_owned(),
    }
}

fn ids(users: &[u64]) -> UserIds {
    UserIds {
        user_ids: users.to_vec(),
    }
}

async fn routes(client: &PresenceServiceClient, users: &[u64]) -> Vec<Route> {
    let mut routes = client.query_routes(&ids(users)).await.unwrap().routes;
    routes.sort_by(|a, b| (a.user_id, &a.device_id).cmp(&(b.user_id, &b.device_id)));
    routes
}

async fn bind_heartbeat_query_status(bus: Bus) {
    let client = client(&bus, settings(30_000));
    let phone = route(1, "phone", "gw-a");
    let laptop = route(1, "laptop", "gw-b");
    let web = route(2, "web", "gw-a");
    for r in [&phone, &laptop, &web] {
        client.bind_route(r).await.unwrap();
    }
    let reply = client
        .heartbeat(&HeartbeatRequest {
            gateway_id: "gw-a".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.ttl_ms, 30_000);

    let all = vec![laptop.clone(), phone.clone(), web.clone()];
    assert_eq!(routes(&client, &[1, 2, 3]).await, all);
    assert_eq!(routes(&client, &[2, 1, 2, 1]).await, all, "each user once");
    assert!(routes(&client, &[]).await.is_empty());

    client
        .unbind_route(&unbind(1, "phone", "gw-a"))
        .await
        .unwrap();
    assert_eq!(routes(&client, &[1]).await, vec![laptop.clone()]);

    let statuses = client
        .query_status(&ids(&[3, 1, 2]))
        .await
        .unwrap()
        .statuses;
    let seen: Vec<(u64, bool)> = statuses.iter().map(|s| (s.user_id, s.online)).collect();
    assert_eq!(seen, vec![(3, false), (1, true), (2, true)]);
    assert_eq!(statuses[0].last_seen_ms, 0, "user 3 was never online");
    assert!(statuses[1].last_seen_ms > 0);
}

async fn next_event(events: &mut mpsc::Receiver<bytes::Bytes>) -> PresenceChanged {
    let payload = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("an event arrives")
        .expect("the subscription is open");
    match Event::decode(payload).unwrap().event {
        Some(event::Event::Presence(changed)) => changed,
        other => panic!("not a presence event: {other:?}"),
    }
}

async fn presence_events_on_first_and_last_device(bus: Bus) {
    let client = client(&bus, settings(30_000));
    let mut events = bus
        .pubsub
        .subscribe(channels::BROADCAST.to_owned())
        .await
        .unwrap();
    let before = im_common::ids::now_ms();
    client.bind_route(&route(7, "phone", "gw-a")).await.unwrap();
    let online = next_event(&mut events).await;
    assert_eq!((online.user_id, online.online), (7, true));
    assert!(online.at_ms >= before);

    // Neither a second device nor the loss of one of two is news.
    client
        .bind_route(&route(7, "laptop", "gw-b"))
        .await
        .unwrap();
    client
        .unbind_route(&unbind(7, "phone", "gw-a"))
        .await
        .unwrap();
    // Nor an unbind by a gateway that does not hold the device.
    client
        .unbind_route(&unbind(7, "laptop", "gw-a"))
        .await
        .unwrap();
    client
        .unbind_route(&unbind(7, "laptop", "gw-b"))
        .await
        .unwrap();
    let offline = next_event(&mut events).await;
    assert_eq!((offline.user_id, offline.online), (7, false));

    // Unbinding again changes nothing and says nothing; the next bind is news again.
    client
        .unbind_route(&unbind(7, "laptop", "gw-b"))
        .await
        .unwrap();
    client.bind_route(&route(7, "phone", "gw-a")).await.unwrap();
    let again = next_event(&mut events).await;
    assert_eq!((again.user_id, again.online), (7, true));
}

async fn silent_gateway_routes_expire(bus: Bus) {
    // Long enough that the heartbeat loop below keeps gw-alive on a busy machine.
    let client = client(&bus, settings(600));
    let start = Instant::now();
    client
        .bind_route(&route(1, "phone", "gw-alive"))
        .await
        .unwrap();
    client
        .bind_route(&route(2, "phone", "gw-silent"))
        .await
        .unwrap();
    let beat = HeartbeatRequest {
        gateway_id: "gw-alive".into(),
    };
    loop {
        client.heartbeat(&beat).await.unwrap();
        let users: Vec<u64> = routes(&client, &[1, 2])
            .await
            .iter()
            .map(|r| r.user_id)
            .collect();
        assert!(users.contains(&1), "the heartbeating gateway's route went");
        if !users.contains(&2) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the silent gateway never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(600));
    let statuses = client.query_status(&ids(&[1, 2])).await.unwrap().statuses;
    assert!(statuses[0].online && !statuses[1].online);

    let swept = client.sweep(&Empty {}).await.unwrap();
    assert_eq!(swept.removed_routes, 1);
    let statuses = client.query_status(&ids(&[2])).await.unwrap().statuses;
    assert!(statuses[0].last_seen_ms > 0, "the sweep recorded last seen");
}

async fn internal_callers_only(bus: Bus) {
    let server = im_presence::server(Presence::new(bus, settings(30_000)).unwrap());
    let anonymous = PresenceServiceClient::new(Client::in_process(&server));
    let user = identity::for_user(CallOptions::new(), &User::new(1).on_device("phone"));
    let codes = [
        anonymous.bind_route(&route(1, "phone", "gw")).await.err(),
        anonymous
            .bind_route_with(&route(1, "phone", "gw"), &user)
            .await
            .err(),
        anonymous
            .unbind_route(&unbind(1, "phone", "gw"))
            .await
            .err(),
        anonymous
            .heartbeat(&HeartbeatRequest {
                gateway_id: "gw".into(),
            })
            .await
            .err(),
        anonymous.query_routes(&ids(&[1])).await.err(),
        anonymous.query_status(&ids(&[1])).await.err(),
        anonymous.sweep(&Empty {}).await.err(),
    ];
    for code in codes {
        assert_eq!(code.map(|err| err.code()), Some(Code::Unauthenticated));
    }
    // And nothing was bound by the refused calls.
    let gateway = client_of(&server);
    assert!(routes(&gateway, &[1]).await.is_empty());
    // A status query made for a user is refused: whose status a user may see is the user
    // service's to say, and the gateway asks presence as itself.
    let for_user = gateway.query_status_with(&ids(&[1]), &user).await;
    assert_eq!(
        for_user.err().map(|err| err.code()),
        Some(Code::PermissionDenied)
    );
    assert!(gateway.query_status(&ids(&[1])).await.is_ok());
}

fn client_of(server: &mprpc::Server) -> PresenceServiceClient {
    let client = Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(server);
    PresenceServiceClient::new(client)
}

async fn bad_input_is_invalid_argument(bus: Bus) {
    let client = client(&bus, settings(30_000));
    let long = "x".repeat(65);
    let bad_routes = [
        route(0, "phone", "gw"),
        route(1, "", "gw"),
        route(1, "has space", "gw"),
        route(1, &long, "gw"),
        route(1, "phone", ""),
        route(1, "phone", &long),
        // A brace would move the Redis Cluster hash tag of the gateway's keys.
        route(1, "phone", "gw-{a}"),
        route(1, "phone", "}"),
        Route {
            device_kind: 99,
            ..route(1, "phone", "gw")
        },
    ];
    for bad in &bad_routes {
        let err = client.bind_route(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?} accepted");
    }
    for bad in [
        unbind(0, "phone", "gw"),
        unbind(1, "", "gw"),
        unbind(1, "phone", ""),
    ] {
        let err = client.unbind_route(&bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?} accepted");
    }
    let no_gateway = HeartbeatRequest {
        gateway_id: String::new(),
    };
    let err = client.heartbeat(&no_gateway).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let too_many: Vec<u64> = (1..=10_001).collect();
    for bad in [ids(&too_many), ids(&[1, 0])] {
        let err = client.query_routes(&bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = client.query_status(&bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let most: Vec<u64> = (1..=10_000).collect();
    assert!(
        client
            .query_routes(&ids(&most))
            .await
            .unwrap()
            .routes
            .is_empty()
    );
    assert!(
        routes(&client, &[1]).await.is_empty(),
        "nothing bad was bound"
    );
}

/// What `gateway`'s stream holds read and not acknowledged by the consumer `gw`.
async fn pending(bus: &Bus, gateway: &str) -> Vec<bytes::Bytes> {
    let stream = delivery_stream(gateway);
    let entries = bus
        .streams
        .read(stream, "gw".into(), ReadFrom::Pending, 10, Duration::ZERO)
        .await
        .unwrap();
    entries.into_iter().map(|entry| entry.payload).collect()
}

async fn the_sweeper_removes_the_streams_of_dead_gateways(bus: Bus) {
    let settings = PresenceSettings {
        route_ttl_ms: 100,
        sweep_interval_ms: 20,
        dead_stream_after_ms: 500,
    };
    let client = client(&bus, settings.clone());
    let sweeper = Sweeper::start_configured(&bus, &settings).expect("sweeping is on");
    let beat = |gateway: &str| HeartbeatRequest {
        gateway_id: gateway.into(),
    };
    let start = Instant::now();
    for gateway in ["gw-gone", "gw-live"] {
        client.heartbeat(&beat(gateway)).await.unwrap();
        let stream = delivery_stream(gateway);
        let payload = bytes::Bytes::copy_from_slice(gateway.as_bytes());
        bus.streams.push(stream.clone(), payload).await.unwrap();
        // Read and not acknowledged, as by a gateway that died before writing it out.
        let read = bus
            .streams
            .read(stream, "gw".into(), ReadFrom::New, 10, Duration::ZERO);
        assert_eq!(read.await.unwrap().len(), 1);
    }
    // gw-live beats on; gw-gone's stream goes once gw-gone has been silent long enough.
    while !pending(&bus, "gw-gone").await.is_empty() {
        assert!(
            start.elapsed() < DEADLINE,
            "gw-gone's stream was never removed"
        );
        client.heartbeat(&beat("gw-live")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Less one: the Redis bus counts whole milliseconds.
    let silent = Duration::from_millis(settings.dead_stream_after_ms - 1);
    assert!(
        start.elapsed() >= silent,
        "removed after {:?} of silence",
        start.elapsed()
    );
    assert_eq!(pending(&bus, "gw-live").await, ["gw-live"], "kept");
    tokio::time::timeout(DEADLINE, sweeper.stop())
        .await
        .expect("the sweeper stops");
}

#[tokio::test]
async fn the_sweeper_sweeps_until_stopped() {
    let bus = Bus::in_process();
    let sweeper = Sweeper::start(bus.routes.clone(), Duration::from_millis(50));
    bus.routes
        .bind(route(5, "phone", "gw-gone"), Duration::from_millis(100))
        .await
        .unwrap();
    let start = Instant::now();
    // Only a sweep records when a user whose gateway lapsed was last seen.
    while bus.routes.status(vec![5]).await.unwrap()[0].last_seen_ms == 0 {
        assert!(start.elapsed() < DEADLINE, "the sweeper never swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(DEADLINE, sweeper.stop())
        .await
        .expect("the sweeper stops");
}

#[test]
fn settings_are_checked() {
    assert!(Presence::new(Bus::in_process(), settings(0)).is_err());
    let defaults = PresenceSettings::default();
    assert_eq!(
        (defaults.route_ttl_ms, defaults.sweep_interval_ms),
        (30_000, 10_000)
    );
    assert_eq!(settings(5).sweep_interval(), None);
    assert_eq!(defaults.dead_stream_after_ms, 86_400_000, "24 h");
    let keep = PresenceSettings {
        dead_stream_after_ms: 0,
        ..defaults
    };
    assert_eq!(keep.dead_stream_after(), None, "0 keeps streams");
}

#[test]
fn the_example_config_is_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/im-presence.toml");
    let config: im_presence::Config =
        im_common::config::load(Some(std::path::Path::new(path)), &[]).unwrap();
    let defaults = im_presence::Config::default();
    assert_eq!(config.presence, defaults.presence);
    assert_eq!(config.server.listen, "127.0.0.1:6102");
    assert_eq!(config.server.listen, defaults.server.listen);
    assert_eq!(
        config.server.grace_period_ms,
        defaults.server.grace_period_ms
    );
    assert_eq!(config.redis.url, None);
    assert_eq!(config.discovery.root, defaults.discovery.root);
    assert_eq!(config.log.level, defaults.log.level);
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let mut config = im_presence::Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.metrics_listen = Some("off".into());
    config.server.grace_period_ms = 100;
    config.presence.sweep_interval_ms = 20;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(im_presence::run(config, async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();

    let mut bad = im_presence::Config::default();
    bad.presence.route_ttl_ms = 0;
    let err = im_presence::run(bad, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("presence.route_ttl_ms"), "{err}");
}
