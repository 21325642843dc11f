//! The example configuration is the defaults, and bad keys and values are named.

use std::path::Path;

/// The example configuration, with every key and its default.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/im-group.toml");

#[test]
fn the_example_config_is_the_defaults() {
    let config: im_group::Config = im_common::config::load(Some(Path::new(EXAMPLE)), &[]).unwrap();
    let defaults = im_group::Config::default();
    assert_eq!(config.server.listen, "127.0.0.1:6104");
    assert_eq!(config.server.listen, defaults.server.listen);
    assert_eq!(
        config.server.grace_period_ms,
        defaults.server.grace_period_ms
    );
    assert_eq!(config.discovery.root, defaults.discovery.root);
    assert_eq!(config.database.url, defaults.database.url);
    assert_eq!(
        config.database.max_connections,
        defaults.database.max_connections
    );
    assert_eq!(config.redis.url, None);
    assert_eq!(config.log.level, defaults.log.level);
    assert_eq!(config.group.max_members, 5000);
    assert_eq!(config.group.max_members, defaults.group.max_members);
    assert_eq!(
        config.group.max_join_requests_listed,
        defaults.group.max_join_requests_listed
    );
    config.group.validate().unwrap();
}

#[test]
fn bad_keys_and_values_are_named() {
    let err =
        im_common::config::load::<im_group::Config>(None, &[("group.max_members", "lots".into())])
            .unwrap_err();
    assert!(err.to_string().starts_with("group.max_members:"), "{err}");
    let err =
        im_common::config::load::<im_group::Config>(None, &[("group.max_member", "10".into())])
            .unwrap_err();
    assert!(err.to_string().contains("max_member"), "{err}");
    let config: im_group::Config =
        im_common::config::load(None, &[("group.max_members", "0".into())]).unwrap();
    let err = config.group.validate().unwrap_err();
    assert!(err.to_string().contains("group.max_members"), "{err}");
}
