//! The registry behind a cluster credential, against the shared ZooKeeper on 127.0.0.1:2181
//! (`scripts/services.sh up zookeeper`, or `MPRPC_ZK`): only sessions with the credential
//! change registrations and configuration; anyone may read them.

#[path = "support/zk.rs"]
mod zk;

use std::time::Duration;

use mprpc::discovery::{Discover, DiscoveryError, Instance, Register};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};
use tokio::time::Instant;
use zookeeper_client as client;

const SERVICE: &str = "test.Echo";
const CREDENTIAL: (&str, &str) = ("mpim", "s3cret-cluster-password");

fn unique_root(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("/mprpc-acl-{name}-{:016x}", hasher.finish())
}

fn secured(root: &str, (user, password): (&str, &str)) -> ZkConfig {
    ZkConfig::default()
        .root(root)
        .session_timeout(Duration::from_secs(4))
        .credential(user, password)
}

/// A plain session, authenticated with `credential` when given.
async fn raw(hosts: &str, credential: Option<(&str, &str)>) -> client::Client {
    let mut connector = client::Client::connector().with_session_timeout(Duration::from_secs(4));
    if let Some((user, password)) = credential {
        connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
    }
    connector
        .connect(hosts)
        .await
        .expect("raw ZooKeeper client")
}

const EPHEMERAL_OPEN: client::CreateOptions<'static> =
    client::CreateMode::Ephemeral.with_acls(client::Acls::anyone_all());
const PERSISTENT_OPEN: client::CreateOptions<'static> =
    client::CreateMode::Persistent.with_acls(client::Acls::anyone_all());

/// Deletes `root` and everything under it, as the credential's holder.
async fn remove_tree(admin: &client::Client, root: &str) {
    let mut stack = vec![root.to_owned()];
    let mut order = Vec::new();
    while let Some(path) = stack.pop() {
        for child in admin.list_children(&path).await.unwrap_or_default() {
            stack.push(format!("{path}/{child}"));
        }
        order.push(path);
    }
    for path in order.iter().rev() {
        let _ = admin.delete(path, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_credential_changes_the_registry() {
    let hosts = zk::shared_hosts().await;
    let root = unique_root("only");
    let outsider = raw(&hosts, None).await;
    let dir = format!("{root}/services/{SERVICE}");

    // What an earlier, open deployment (or an attacker while it was open) left behind: an
    // open service directory with a registration in it.
    outsider
        .mkdir(&dir, &PERSISTENT_OPEN)
        .await
        .expect("open dir");
    let impostor = format!("{dir}/impostor");
    let data = br#"{"addr":"10.9.9.9:1"}"#;
    outsider
        .create(&impostor, data, &EPHEMERAL_OPEN)
        .await
        .expect("open registration");

    let cluster = ZooKeeper::connect(&hosts, secured(&root, CREDENTIAL))
        .await
        .expect("connect with the credential");
    assert!(
        outsider
            .check_stat(&impostor)
            .await
            .expect("stat")
            .is_none(),
        "a registration made without the credential is removed at connect"
    );
    let (acls, _) = outsider.get_acl(&dir).await.expect("acl");
    assert!(
        acls.iter()
            .all(|acl| acl.scheme() == "digest" || acl.permission() == client::Permission::READ),
        "the old open directory is closed: {acls:?}"
    );

    let registration = cluster
        .register(SERVICE, Instance::new("10.0.0.1:7000").id("genuine"))
        .await
        .expect("register");
    cluster
        .set_config("limits", &serde_json::json!({"max": 1}))
        .await
        .expect("config");

    // Anyone may read; nobody without the credential may change anything.
    let genuine = format!("{dir}/genuine");
    assert!(outsider.get_data(&genuine).await.is_ok(), "reads stay open");
    let attempts = [
        outsider
            .create(&format!("{dir}/evil"), data, &EPHEMERAL_OPEN)
            .await
            .map(drop),
        outsider.delete(&genuine, None).await,
        outsider.set_data(&genuine, data, None).await.map(drop),
        outsider
            .set_data(&format!("{root}/config/limits"), b"{}", None)
            .await
            .map(drop),
        outsider
            .create(
                &format!("{root}/services/test.Other"),
                b"",
                &PERSISTENT_OPEN,
            )
            .await
            .map(drop),
        outsider
            .create(&format!("{root}/election"), b"", &PERSISTENT_OPEN)
            .await
            .map(drop),
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt, &Err(client::Error::NoAuth), "attempt {i}");
    }
    let intruder = raw(&hosts, Some(("mpim", "guessed"))).await;
    assert_eq!(
        intruder.delete(&genuine, None).await,
        Err(client::Error::NoAuth),
        "another password is another identity"
    );

    // A second process with the credential registers beside the first and sees it.
    let peer = ZooKeeper::connect(&hosts, secured(&root, CREDENTIAL))
        .await
        .expect("second connect");
    let _second = peer
        .register(SERVICE, Instance::new("10.0.0.2:7000").id("second"))
        .await
        .expect("second register");
    let list = peer.subscribe(SERVICE).await.expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while list.borrow().len() != 2 {
        assert!(Instant::now() < deadline, "both registrations listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A process with a wrong password cannot join the registry at all.
    let refused = ZooKeeper::connect(&hosts, secured(&root, ("mpim", "guessed"))).await;
    assert!(
        matches!(&refused, Err(DiscoveryError::Backend { .. })),
        "a wrong credential fails at connect: {:?}",
        refused.map(|_| ())
    );

    registration.deregister().await;
    cluster.close().await;
    peer.close().await;
    remove_tree(&raw(&hosts, Some(CREDENTIAL)).await, &root).await;
}

#[tokio::test]
async fn a_malformed_credential_is_invalid() {
    for (user, password) in [("", "x"), ("mpim", "")] {
        let config = ZkConfig::default().credential(user, password);
        // No server needed: the credential is checked before connecting.
        let result = ZooKeeper::connect("127.0.0.1:1", config).await;
        assert!(
            matches!(&result, Err(DiscoveryError::Invalid(_))),
            "{user:?}:{password:?}: {:?}",
            result.map(|_| ())
        );
    }
}
