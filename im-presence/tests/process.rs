//! `im-presence` as its own process on Redis and ZooKeeper: it registers, keeps a gateway's
//! routes in Redis through discovery, counts the calls on `/metrics`, and on SIGTERM
//! deregisters and exits cleanly; a bad config stops it at start with one line naming the key.

use im_common::proto::{
    DeviceKind, HeartbeatRequest, PresenceServiceClient, Route, UnbindRouteRequest, UserIds,
};
use im_common::serve::testing::{
    ConfigFile, ServiceProcess, http_get, local_config, refused, unique_root, wait_for, zookeeper,
};
use redis::AsyncCommands;

const BINARY: &str = env!("CARGO_BIN_EXE_im-presence");
const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_routes_in_redis_through_discovery_and_stops_on_sigterm() {
    let redis = redis::Client::open(REDIS).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    // The keys are unprefixed, on a Redis other tests share: ids of this run only.
    let (user, offline) = (rand::random::<u64>() >> 1, rand::random::<u64>() >> 1);
    let gateway = format!("gw-test-{}-{}", std::process::id(), rand::random::<u32>());

    let root = unique_root();
    let config = ConfigFile::new(
        "im-presence.toml",
        &format!(
            "{}[redis]\nurl = \"{REDIS}\"\n[presence]\nroute_ttl_ms = 20000\n",
            local_config(&root)
        ),
    );
    let process = ServiceProcess::start(BINARY, &config.path);
    let discovery = zookeeper(&root).await;
    let client = PresenceServiceClient::new(
        discovery
            .client("gateway", "mpim.PresenceService", 0)
            .await
            .unwrap(),
    );
    wait_for("registration", async || {
        !client.inner().instances().is_empty()
    })
    .await;

    let route = Route {
        user_id: user,
        device_id: "phone".into(),
        device_kind: DeviceKind::Mobile as i32,
        gateway_id: gateway.clone(),
    };
    client.bind_route(&route).await.unwrap();
    let beat = HeartbeatRequest {
        gateway_id: gateway.clone(),
    };
    assert_eq!(client.heartbeat(&beat).await.unwrap().ttl_ms, 20_000);
    let stored: Vec<(String, String)> = redis
        .hgetall(format!("mpim:routes:{{{user}}}"))
        .await
        .unwrap();
    assert_eq!(stored, [("phone".to_owned(), format!("2 {gateway}"))]);

    let users = UserIds {
        user_ids: vec![user, offline],
    };
    assert_eq!(client.query_routes(&users).await.unwrap().routes, [route]);
    let statuses = client.query_status(&users).await.unwrap().statuses;
    let seen: Vec<(u64, bool)> = statuses.iter().map(|s| (s.user_id, s.online)).collect();
    assert_eq!(seen, [(user, true), (offline, false)]);
    assert_eq!(statuses[1].last_seen_ms, 0);

    let unbind = UnbindRouteRequest {
        user_id: user,
        device_id: "phone".into(),
        gateway_id: gateway.clone(),
    };
    client.unbind_route(&unbind).await.unwrap();
    let after = client.query_status(&users).await.unwrap().statuses;
    assert!(!after[0].online && after[0].last_seen_ms > 0, "{after:?}");

    let metrics = http_get(&process.metrics, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(r#"mprpc_server_requests_total{service="mpim.PresenceService",method="QueryStatus",code="OK"} 2"#),
        "{metrics}"
    );

    assert!(process.terminate(), "im-presence exits 0 on SIGTERM");
    wait_for("deregistration", async || {
        client.inner().instances().is_empty()
    })
    .await;
    let _: () = redis
        .del(&[
            format!("mpim:routes:{{{user}}}"),
            format!("mpim:last-seen:{{{user}}}"),
            format!("mpim:gateway:{{{gateway}}}"),
            format!("mpim:gateway-routes:{{{gateway}}}"),
        ])
        .await
        .unwrap();
    let _: () = redis.srem("mpim:gateways", &gateway).await.unwrap();
}

#[test]
fn a_bad_config_stops_it_with_one_line_naming_the_key() {
    for (config, key) in [
        ("[server]\nlisten = 5\n", "server.listen"),
        ("[server]\nlisen = \"127.0.0.1:0\"\n", "server.lisen"),
        ("[presence]\nroute_ttl_ms = 0\n", "presence.route_ttl_ms"),
    ] {
        let stderr = refused(BINARY, config);
        assert!(stderr.contains(key), "{config:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{config:?}: {stderr}");
    }
}
