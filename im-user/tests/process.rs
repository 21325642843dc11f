//! `im-user` as its own process on MariaDB and ZooKeeper: it registers, serves an account's
//! whole life through discovery, counts it on `/metrics`, and on SIGTERM deregisters and
//! exits cleanly; a bad config stops it at start with one line naming the key.

mod support;

use im_common::proto::{
    LoginRequest, LogoutRequest, RegisterRequest, UserServiceClient, VerifyTokenRequest,
};
use im_common::serve::testing::{
    ConfigFile, ServiceProcess, http_get, local_config, refused, unique_root, wait_for, zookeeper,
};
use im_common::store::testing::TestDb;
use mprpc::{CallOptions, Code};
use support::{PASSWORD, SECRET, in_session};

const BINARY: &str = env!("CARGO_BIN_EXE_im-user");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_accounts_through_discovery_and_stops_on_sigterm() {
    let db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let root = unique_root();
    let config = ConfigFile::new(
        "im-user.toml",
        &format!(
            "{}[database]\nurl = \"{}\"\n\
             [auth]\njwt_secret = \"{SECRET}\"\nargon2_memory_kib = 256\nargon2_iterations = 1\n",
            local_config(&root),
            db.url
        ),
    );
    let process = ServiceProcess::start(BINARY, &config.path);
    let discovery = zookeeper(&root).await;
    let client = UserServiceClient::new(
        discovery
            .client("gateway", "mpim.UserService", 0)
            .await
            .unwrap(),
    );
    wait_for("registration", async || {
        !client.inner().instances().is_empty()
    })
    .await;

    let register = RegisterRequest {
        name: "ada".into(),
        password: PASSWORD.into(),
        nickname: "Ada".into(),
    };
    let profile = client.register(&register).await.unwrap();
    assert_eq!(
        (profile.name.as_str(), profile.nickname.as_str()),
        ("ada", "Ada")
    );
    let login = LoginRequest {
        name: "ada".into(),
        password: PASSWORD.into(),
        device_id: "phone".into(),
        client_addr: String::new(),
    };
    let reply = client.login(&login).await.unwrap();
    assert_eq!(
        reply.profile.as_ref().map(|p| p.user_id),
        Some(profile.user_id)
    );
    let verify = VerifyTokenRequest {
        token: reply.token.clone(),
    };
    let verified = client.verify_token(&verify).await.unwrap();
    assert_eq!(
        (
            verified.user_id,
            verified.session_id.as_str(),
            verified.device_id.as_str()
        ),
        (profile.user_id, reply.session_id.as_str(), "phone")
    );

    // Logout acts for the caller of the metadata, whose session is revoked at once.
    let logout = LogoutRequest::default();
    client
        .logout_with(&logout, &in_session(profile.user_id, &reply.session_id))
        .await
        .unwrap();
    let refused_token = client
        .verify_token_with(&verify, &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        refused_token.code(),
        Code::Unauthenticated,
        "{refused_token}"
    );

    let metrics = http_get(&process.metrics, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("mpim_user_registrations_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"mprpc_server_requests_total{service="mpim.UserService",method="Logout",code="OK"} 1"#
        ),
        "{metrics}"
    );

    assert!(process.terminate(), "im-user exits 0 on SIGTERM");
    wait_for("deregistration", async || {
        client.inner().instances().is_empty()
    })
    .await;
    db.drop().await.unwrap();
}

#[test]
fn a_bad_config_stops_it_with_one_line_naming_the_key() {
    for (config, key) in [
        ("[server]\nlisten = 5\n", "server.listen"),
        ("[server]\nlisen = \"127.0.0.1:0\"\n", "server.lisen"),
        ("[auth]\njwt_secret = \"short\"\n", "auth.jwt_secret"),
    ] {
        let stderr = refused(BINARY, config);
        assert!(stderr.contains(key), "{config:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{config:?}: {stderr}");
    }
}
