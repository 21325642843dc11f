//! `im-presence` as its own process with mutual TLS and the ZooKeeper credential, attacked
//! the ways docs/security.md says fail: no certificate, a certificate from another CA,
//! another role's certificate, user metadata from a role that is not a gateway, and a false
//! registration in ZooKeeper without the service's certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use im_common::certs;
use im_common::config::{DiscoveryConfig, TlsConfig};
use im_common::identity::{self, Role, User};
use im_common::proto::{PresenceServiceClient, UserIds};
use im_common::serve::Discovery;
use im_common::serve::testing::{
    ConfigFile, ServiceProcess, ZOOKEEPER, refused, unique_root, wait_for,
};
use mprpc::discovery::{Instance, Register};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};
use mprpc::{CallOptions, Code};

const BINARY: &str = env!("CARGO_BIN_EXE_im-presence");

/// A CA and every role's certificate in a directory of their own, and the ZooKeeper
/// credential beside them; removed when dropped.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "mpim-trust-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        certs::ensure_ca(&dir).unwrap();
        for role in Role::ALL {
            certs::issue(&dir, role, 1).unwrap();
        }
        std::fs::write(dir.join("zookeeper-credential"), "mpim:test-credential\n").unwrap();
        Pki { dir }
    }

    fn tls(&self, role: Role) -> TlsConfig {
        let (cert, key) = certs::files(&self.dir, role);
        TlsConfig {
            cert: Some(cert),
            key: Some(key),
            ca: Some(self.dir.join("ca.pem")),
            ..TlsConfig::default()
        }
    }

    fn credential(&self) -> PathBuf {
        self.dir.join("zookeeper-credential")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration of an im-presence process holding the presence certificate of `pki`,
/// registered under `root` with the cluster credential.
fn presence_config(pki: &Pki, root: &str) -> ConfigFile {
    let (cert, key) = certs::files(&pki.dir, Role::Presence);
    ConfigFile::new(
        "im-presence.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             grace_period_ms = 2000\n\
             [discovery]\nzookeeper = \"{ZOOKEEPER}\"\nroot = \"{root}\"\n\
             session_timeout_ms = 4000\ncredential_file = \"{}\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            pki.credential().display(),
            cert.display(),
            key.display(),
            pki.dir.join("ca.pem").display()
        ),
    )
}

fn discovery_config(root: &str, credential: &Path) -> DiscoveryConfig {
    DiscoveryConfig {
        zookeeper: Some(ZOOKEEPER.into()),
        root: root.to_owned(),
        credential_file: Some(credential.to_owned()),
        ..DiscoveryConfig::default()
    }
}

/// A client of the presence service as a process holding `tls` would make it.
async fn client(root: &str, credential: &Path, tls: &TlsConfig) -> PresenceServiceClient {
    let discovery = Discovery::connect(&discovery_config(root, credential), tls)
        .await
        .expect("discovery");
    let client = discovery
        .client("im-gateway", "mpim.PresenceService", 0)
        .await
        .expect("client");
    wait_for("an instance listed", async || {
        !client.instances().is_empty()
    })
    .await;
    PresenceServiceClient::new(client)
}

fn query() -> UserIds {
    UserIds {
        user_ids: vec![rand::random::<u64>() >> 1],
    }
}

fn short() -> CallOptions {
    CallOptions::new().timeout(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cluster_gets_in_and_only_a_gateway_acts_for_users() {
    let pki = Pki::new("cluster");
    let rogue = Pki::new("rogue");
    let root = unique_root();
    let config = presence_config(&pki, &root);
    let _process = ServiceProcess::start(BINARY, &config.path);

    // The gateway's certificate: calls, for a user too.
    let gateway = client(&root, &pki.credential(), &pki.tls(Role::Gateway)).await;
    gateway
        .query_routes_with(&query(), &short())
        .await
        .expect("a gateway calls");
    let for_user = identity::for_user(short(), &User::new(7).on_device("phone"));
    gateway
        .query_routes_with(&query(), &for_user)
        .await
        .expect("a gateway acts for a user");

    // Another role's certificate: through the handshake, refused by the policy, and refused
    // outright when it names a user.
    let message = client(&root, &pki.credential(), &pki.tls(Role::Message)).await;
    let err = message
        .query_routes_with(&query(), &short())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = message
        .query_routes_with(&query(), &for_user)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("only a gateway"), "{err}");

    // No certificate, or one from another CA: nothing gets past the handshake.
    for (what, tls) in [
        ("plaintext", TlsConfig::default()),
        ("another CA's gateway certificate", rogue.tls(Role::Gateway)),
    ] {
        let outsider = client(&root, &pki.credential(), &tls).await;
        let err = outsider
            .query_routes_with(&query(), &short())
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{what}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_registration_without_the_service_certificate_gets_no_calls() {
    let pki = Pki::new("impostor");
    let root = unique_root();
    let config = presence_config(&pki, &root);
    let _genuine = ServiceProcess::start(BINARY, &config.path);

    // An impostor with a valid cluster certificate of another role (and the credential:
    // the worst case) registers as the presence service. It serves nothing: any call that
    // reached it would fail.
    let message = pki.tls(Role::Message);
    let identity = mprpc::tls::Identity::from_pem_files(
        message.cert.as_ref().unwrap(),
        message.key.as_ref().unwrap(),
    )
    .unwrap();
    let ca = std::fs::read(pki.dir.join("ca.pem")).unwrap();
    let impostor = mprpc::Server::builder()
        .tls(mprpc::tls::ServerTls::mutual(identity, &ca).unwrap())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = tokio::spawn(async move {
        let _ = impostor.serve(listener, std::future::pending()).await;
    });
    let zk = ZooKeeper::connect(
        ZOOKEEPER,
        ZkConfig::default()
            .root(root.clone())
            .credential("mpim", "test-credential"),
    )
    .await
    .unwrap();
    let _registration = zk
        .register("mpim.PresenceService", Instance::new(addr))
        .await
        .unwrap();

    let gateway = client(&root, &pki.credential(), &pki.tls(Role::Gateway)).await;
    wait_for("both instances listed", async || {
        gateway.inner().instances().len() == 2
    })
    .await;
    for i in 0..30 {
        gateway
            .query_routes_with(&query(), &short())
            .await
            .unwrap_or_else(|err| panic!("call {i} reached the impostor or failed: {err}"));
    }
    serving.abort();
}

#[test]
fn plaintext_off_loopback_and_wildcards_are_refused_at_start() {
    for (config, words) in [
        ("[server]\nlisten = \"0.0.0.0:0\"\n", "wildcard"),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"x.pem\"\n",
            "cert, key and ca go together",
        ),
    ] {
        let stderr = refused(BINARY, config);
        assert!(stderr.contains(words), "{config:?}: {stderr}");
    }
}
