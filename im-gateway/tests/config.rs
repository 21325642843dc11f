//! The example configuration is the defaults, and bad keys and values are named.

use std::path::Path;

/// The example configuration, with every key and its default.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/im-gateway.toml");

#[test]
fn the_example_config_is_the_defaults() {
    let config: im_gateway::Config =
        im_common::config::load(Some(Path::new(EXAMPLE)), &[]).unwrap();
    let defaults = im_gateway::Config::default();
    assert_eq!(config.server.listen, defaults.server.listen);
    assert_eq!(config.ws.listen, defaults.ws.listen);
    assert_eq!(
        format!("{:?}", config.legacy),
        format!("{:?}", defaults.legacy)
    );
    assert!(config.legacy.address().is_none());
    assert_eq!(
        format!("{:?}", config.gateway),
        format!("{:?}", defaults.gateway)
    );
    config.gateway.validate().unwrap();
}

#[test]
fn bad_keys_and_values_are_named() {
    let err = im_common::config::load::<im_gateway::Config>(
        None,
        &[("gateway.max_queued", "lots".into())],
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("gateway.max_queued:"), "{err}");
    let err = im_common::config::load::<im_gateway::Config>(
        None,
        &[("gateway.idle_timout_ms", "5".into())],
    )
    .unwrap_err();
    assert!(err.to_string().contains("idle_timout_ms"), "{err}");
    let config: im_gateway::Config =
        im_common::config::load(None, &[("gateway.max_in_flight", "0".into())]).unwrap();
    let err = config.gateway.validate().unwrap_err();
    assert!(err.to_string().contains("gateway.max_in_flight"), "{err}");
    // Sessions are re-checked at least hourly, and not so often that im-user drowns.
    for ms in ["50", "3600001"] {
        let config: im_gateway::Config =
            im_common::config::load(None, &[("gateway.session_check_ms", ms.into())]).unwrap();
        let err = config.gateway.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("gateway.session_check_ms must be between 100 and 3600000"),
            "{err}"
        );
    }
    let config: im_gateway::Config =
        im_common::config::load(None, &[("gateway.session_check_ms", "1000".into())]).unwrap();
    assert_eq!(config.gateway.session_check_ms, 1000);
    config.gateway.validate().unwrap();
    // The id is the Redis Cluster hash tag of the gateway's keys.
    let config: im_gateway::Config =
        im_common::config::load(None, &[("gateway.id", "gw-{1}".into())]).unwrap();
    let err = config.gateway.validate().unwrap_err();
    assert!(err.to_string().contains("gateway.id"), "{err}");
}

#[test]
fn redis_is_one_server_or_a_cluster() {
    let config: im_gateway::Config = im_common::config::load(
        None,
        &[(
            "redis.cluster",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002".into(),
        )],
    )
    .unwrap();
    assert_eq!(config.redis.cluster.len(), 2);
    let err = im_common::config::load::<im_gateway::Config>(
        None,
        &[
            ("redis.cluster", "redis://127.0.0.1:7001".into()),
            ("redis.url", "redis://127.0.0.1:6379".into()),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("redis:"), "{err}");
}
