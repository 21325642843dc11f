//! The example configuration is the defaults, and bad keys are named.

use std::path::Path;

/// The example configuration, with every key and its default.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/mpim.toml");

#[test]
fn the_example_config_is_the_defaults() {
    let config: mpim::Config = im_common::config::load(Some(Path::new(EXAMPLE)), &[]).unwrap();
    assert_eq!(
        format!("{config:?}"),
        format!("{:?}", mpim::Config::default())
    );
}

#[test]
fn bad_keys_are_named() {
    let err = im_common::config::load::<mpim::Config>(None, &[("gateway.max_queud", "5".into())])
        .unwrap_err();
    assert!(err.to_string().starts_with("gateway.max_queud:"), "{err}");
    let err =
        im_common::config::load::<mpim::Config>(None, &[("message.max_body_bytes", "x".into())])
            .unwrap_err();
    assert!(
        err.to_string().starts_with("message.max_body_bytes:"),
        "{err}"
    );
}
