//! The example configuration loads, and bad keys and values are named.

use std::path::Path;

/// The example configuration, with every key and its default.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/im-message.toml");

#[test]
fn the_example_config_is_the_defaults() {
    let config: im_message::Config =
        im_common::config::load(Some(Path::new(EXAMPLE)), &[]).unwrap();
    let defaults = im_message::Config::default();
    assert_eq!(config.server.listen, defaults.server.listen);
    assert_eq!(config.database.url, defaults.database.url);
    assert_eq!(
        config.message.max_body_bytes,
        defaults.message.max_body_bytes
    );
    assert_eq!(
        config.message.recall_window_ms,
        defaults.message.recall_window_ms
    );
    assert!(config.message.friends_only);
}

#[test]
fn bad_keys_and_values_are_named() {
    let err = im_common::config::load::<im_message::Config>(
        None,
        &[("message.max_body_bytes", "lots".into())],
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("message.max_body_bytes:"),
        "{err}"
    );
    let err = im_common::config::load::<im_message::Config>(
        None,
        &[("message.frends_only", "false".into())],
    )
    .unwrap_err();
    assert!(err.to_string().contains("frends_only"), "{err}");
}
