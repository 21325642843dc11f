//! The example configuration loads, and bad keys and values are named.

use std::path::Path;

/// The example configuration, with every key and its default.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/im-user.toml");

#[test]
fn the_example_config_is_the_defaults() {
    let config: im_user::Config = im_common::config::load(Some(Path::new(EXAMPLE)), &[]).unwrap();
    let defaults = im_user::Config::default();
    assert_eq!(config.server.listen, defaults.server.listen);
    assert_eq!(config.server.listen, "127.0.0.1:6101");
    assert_eq!(config.database.url, defaults.database.url);
    assert_eq!(config.database.replica_max_lag_ms, 10_000);
    assert_eq!(
        config.database.replica_max_lag_ms,
        defaults.database.replica_max_lag_ms
    );
    assert_eq!(config.auth.jwt_secret, defaults.auth.jwt_secret);
    assert!(!config.auth.dev);
    assert_eq!(config.auth.token_ttl_secs, 7 * 24 * 3600);
    assert_eq!(
        (
            config.auth.argon2_memory_kib,
            config.auth.argon2_iterations,
            config.auth.argon2_parallelism
        ),
        (19456, 2, 1)
    );
    assert_eq!(
        (
            config.cache.profile_ttl_secs,
            config.cache.list_ttl_secs,
            config.cache.session_ttl_secs
        ),
        (
            defaults.cache.profile_ttl_secs,
            defaults.cache.list_ttl_secs,
            defaults.cache.session_ttl_secs
        )
    );
    // As shipped, it is refused until a secret is set.
    let err = config.auth.validate().unwrap_err();
    assert!(err.to_string().starts_with("auth.jwt_secret:"), "{err}");
    let secret = "0123456789abcdef0123456789abcdef".to_owned();
    let configured: im_user::Config =
        im_common::config::load(Some(Path::new(EXAMPLE)), &[("auth.jwt_secret", secret)]).unwrap();
    configured.auth.validate().unwrap();
}

#[test]
fn bad_keys_and_values_are_named() {
    let err = im_common::config::load::<im_user::Config>(
        None,
        &[("auth.argon2_iterations", "many".into())],
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("auth.argon2_iterations:"),
        "{err}"
    );
    let err = im_common::config::load::<im_user::Config>(None, &[("auth.jwt_secrets", "x".into())])
        .unwrap_err();
    assert!(err.to_string().contains("jwt_secrets"), "{err}");
}
