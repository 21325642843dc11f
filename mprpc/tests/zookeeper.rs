//! The ZooKeeper backend against a real ZooKeeper: the shared one on 127.0.0.1:2181
//! (`scripts/services.sh up zookeeper`, or `MPRPC_ZK` for another address) and, for the
//! restart test, a private server started here. Each test works under its own root.

#[path = "support/relay.rs"]
mod relay;
#[path = "support/zk.rs"]
mod zk;

use std::collections::BTreeSet;
use std::time::Duration;

use mprpc::discovery::{Discover, DiscoveryError, Instance, Instances, Register};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};
use tokio::sync::watch;
use tokio::time::Instant;
use zookeeper_client as client;

const SERVICE: &str = "test.Echo";
/// Short, so that expiry tests are quick; ZooKeeper's minimum with a 2 s tick.
const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// Upper bound for anything that should converge.
const CONVERGE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- helpers

/// Test output shows the library's logs (`RUST_LOG=mprpc=debug` for more).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mprpc=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The shared server's address; fails the test (rather than skipping it) when it is down.
async fn shared_hosts() -> String {
    init_logs();
    zk::shared_hosts().await
}

fn unique_root() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("/mprpc-test-{:016x}", hasher.finish())
}

fn config(root: &str) -> ZkConfig {
    ZkConfig::default()
        .root(root)
        .session_timeout(SESSION_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
}

async fn connect(hosts: &str, root: &str) -> ZooKeeper {
    ZooKeeper::connect(hosts, config(root))
        .await
        .expect("connect to ZooKeeper")
}

/// Polls `cond` until it holds; fails with `what` after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    eventually_async(what, within, async || cond()).await;
}

/// [`eventually`] for conditions that ask ZooKeeper.
async fn eventually_async(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `cond` holds for the whole of `period` (an outage, say).
async fn holds(what: &str, period: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(cond(), "stopped holding: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addrs(list: &watch::Receiver<Instances>) -> Vec<String> {
    let mut addrs: Vec<String> = list.borrow().iter().map(|i| i.addr.clone()).collect();
    addrs.sort();
    addrs
}

fn instance(port: u16) -> Instance {
    Instance::new(format!("10.0.0.1:{port}")).id(format!("10.0.0.1_{port}"))
}

/// A plain client on the same ensemble, for looking at nodes the way an operator would.
async fn raw(hosts: &str) -> client::Client {
    client::Client::connector()
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(hosts)
        .await
        .expect("raw ZooKeeper client")
}

async fn ls(raw: &client::Client, path: &str) -> Vec<String> {
    let mut children = match raw.list_children(path).await {
        Ok(children) => children,
        Err(client::Error::NoNode) => Vec::new(),
        Err(err) => panic!("ls {path}: {err}"),
    };
    children.sort();
    children
}

/// The session owning the ephemeral node at `path`, if it exists.
async fn owner(raw: &client::Client, path: &str) -> Option<i64> {
    raw.check_stat(path)
        .await
        .expect("stat")
        .map(|stat| stat.ephemeral_owner)
}

/// Connects through a [`relay::Relay`], so that [`expire`] can cut the handle off.
async fn connect_relayed(hosts: &str, root: &str) -> (relay::Relay, ZooKeeper) {
    let relay = relay::Relay::start(hosts).await;
    let zk = connect(&relay.hosts(), root).await;
    (relay, zk)
}

/// Makes ZooKeeper expire the session of `zk`, which reaches ZooKeeper through `relay`.
/// Cut off, `zk` cannot take its session back while a second client takes it over (same id
/// and password) and closes it; restored, `zk` learns that the session expired and opens a
/// new one. Returns once it has.
async fn expire(hosts: &str, relay: &relay::Relay, zk: &ZooKeeper) {
    let current = zk.client().expect("a live session");
    let old = current.session_id().0;
    let session = current.session().clone();
    drop(current);
    relay.cut();
    // Should the intruder come late, ZooKeeper has expired the session by itself.
    match client::Client::connector()
        .with_session(session)
        .connect(hosts)
        .await
    {
        Ok(intruder) => {
            let mut states = intruder.state_watcher();
            drop(intruder);
            let closed = async {
                while !states.peek_state().is_terminated() {
                    states.changed().await;
                }
            };
            tokio::time::timeout(CONVERGE, closed)
                .await
                .expect("the taken-over session closes");
        }
        Err(client::Error::SessionExpired) => {}
        Err(err) => panic!("take session {old:#x} over: {err}"),
    }
    relay.restore();
    eventually("a new session", CONVERGE, || {
        zk.session_id().is_some_and(|id| id != old)
    })
    .await;
}

/// Ends the test's sessions (their ephemeral nodes go, and no subscription recreates a
/// path), then deletes `root` and everything under it.
async fn finish(raw: &client::Client, root: &str, handles: &[&ZooKeeper]) {
    for zk in handles {
        zk.close().await;
    }
    let mut stack = vec![root.to_owned()];
    let mut order = Vec::new();
    while let Some(path) = stack.pop() {
        for child in ls(raw, &path).await {
            stack.push(format!("{path}/{child}"));
        }
        order.push(path);
    }
    for path in order.iter().rev() {
        match raw.delete(path, None).await {
            Ok(()) | Err(client::Error::NoNode) => {}
            Err(err) => panic!("delete {path}: {err}"),
        }
    }
}

// ---------------------------------------------------------------- discovery and registration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_and_go() {
    let hosts = shared_hosts().await;
    let root = unique_root();
    let raw = raw(&hosts).await;
    let dir = format!("{root}/services/{SERVICE}");

    let caller = connect(&hosts, &root).await;
    let list = caller.subscribe(SERVICE).await.expect("subscribe");
    assert!(addrs(&list).is_empty());

    let mut servers = Vec::new();
    let mut registrations = Vec::new();
    for port in [7001, 7002, 7003] {
        let server = connect(&hosts, &root).await;
        registrations.push(
            server
                .register(SERVICE, instance(port))
                .await
                .expect("register"),
        );
        servers.push(server);
    }
    let all = ["10.0.0.1:7001", "10.0.0.1:7002", "10.0.0.1:7003"];
    eventually("3 instances listed", CONVERGE, || addrs(&list) == all).await;
    assert_eq!(
        ls(&raw, &dir).await,
        ["10.0.0.1_7001", "10.0.0.1_7002", "10.0.0.1_7003"]
    );
    assert_eq!(list.borrow()[0].id, "10.0.0.1_7001");
    let (data, stat) = raw
        .get_data(&format!("{dir}/10.0.0.1_7001"))
        .await
        .expect("get");
    assert_eq!(
        stat.ephemeral_owner,
        servers[0].session_id().expect("session")
    );
    let json: serde_json::Value = serde_json::from_slice(&data).expect("JSON data");
    for field in ["addr", "weight", "zone", "version", "started_at"] {
        assert!(json.get(field).is_some(), "{field} missing in {json}");
    }
    assert!(
        json.get("id").is_none(),
        "the id is the node name, not data: {json}"
    );

    // A second subscriber of the same service shares the first one's list.
    let again = caller.subscribe(SERVICE).await.expect("subscribe again");
    assert_eq!(addrs(&again), all);

    // Deregistration returns once ZooKeeper has deleted the node.
    registrations.remove(0).deregister().await;
    assert_eq!(ls(&raw, &dir).await, ["10.0.0.1_7002", "10.0.0.1_7003"]);
    eventually("2 instances after deregister", CONVERGE, || {
        addrs(&list) == all[1..]
    })
    .await;

    // A server whose session ends without deregistering (a crash) disappears too.
    servers[1].close().await;
    eventually("1 instance after a session ended", CONVERGE, || {
        addrs(&list) == all[2..]
    })
    .await;
    assert_eq!(ls(&raw, &dir).await, ["10.0.0.1_7003"]);
    let refused = servers[1].register(SERVICE, instance(7004)).await;
    assert!(
        matches!(&refused, Err(DiscoveryError::Backend { context, .. }) if context.contains("closed")),
        "a closed handle registers nothing: {:?}",
        refused.map(|_| ())
    );
    assert_eq!(ls(&raw, &dir).await, ["10.0.0.1_7003"]);

    drop(registrations);
    let mut handles = vec![&caller];
    handles.extend(servers.iter());
    finish(&raw, &root, &handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_data_updates_and_garbage_is_skipped() {
    let hosts = shared_hosts().await;
    let root = unique_root();
    let raw = raw(&hosts).await;
    let dir = format!("{root}/services/{SERVICE}");
    let caller = connect(&hosts, &root).await;
    let list = caller.subscribe(SERVICE).await.expect("subscribe");

    let server = connect(&hosts, &root).await;
    let first = server
        .register(SERVICE, instance(7101))
        .await
        .expect("register");
    eventually("instance listed", CONVERGE, || {
        addrs(&list) == ["10.0.0.1:7101"]
    })
    .await;

    // A node whose data is not an instance is left out; the others stay.
    let opts = client::CreateMode::Persistent.with_acls(client::Acls::anyone_all());
    raw.create(&format!("{dir}/junk"), b"not json", &opts)
        .await
        .expect("create junk");
    // Registering again under the same id replaces the data: subscribers see the new weight.
    let second = server
        .register(SERVICE, instance(7101).weight(5))
        .await
        .expect("register again");
    eventually("new weight", CONVERGE, || {
        list.borrow().first().is_some_and(|i| i.weight == 5)
    })
    .await;
    assert_eq!(addrs(&list), ["10.0.0.1:7101"]);

    // The first registration is superseded: withdrawing it leaves the node to the second.
    first.deregister().await;
    assert_eq!(ls(&raw, &dir).await, ["10.0.0.1_7101", "junk"]);
    second.deregister().await;
    assert_eq!(ls(&raw, &dir).await, ["junk"]);
    eventually("no instance left", CONVERGE, || addrs(&list).is_empty()).await;

    finish(&raw, &root, &[&caller, &server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_recover() {
    let hosts = shared_hosts().await;
    let root = unique_root();
    let raw = raw(&hosts).await;
    let dir = format!("{root}/services/{SERVICE}");
    let (caller_link, caller) = connect_relayed(&hosts, &root).await;
    let list = caller.subscribe(SERVICE).await.expect("subscribe");
    let (server_link, server) = connect_relayed(&hosts, &root).await;
    let _registration = server
        .register(SERVICE, instance(7201))
        .await
        .expect("register");
    eventually("instance listed", CONVERGE, || {
        addrs(&list) == ["10.0.0.1:7201"]
    })
    .await;
    let node = format!("{dir}/10.0.0.1_7201");
    let first = owner(&raw, &node).await.expect("node");

    // The server's session expires: ZooKeeper deletes the node, the server creates it again
    // in its new session.
    expire(&hosts, &server_link, &server).await;
    let second = server.session_id().expect("new session");
    assert_ne!(first, second);
    eventually_async("node owned by the new session", CONVERGE, async || {
        owner(&raw, &node).await == Some(second)
    })
    .await;
    eventually("instance listed again", CONVERGE, || {
        addrs(&list) == ["10.0.0.1:7201"]
    })
    .await;

    // The caller's session expires: its watches are gone with it, so it must re-arm them
    // in the new session to see later changes.
    expire(&hosts, &caller_link, &caller).await;
    let other = connect(&hosts, &root).await;
    let _more = other
        .register(SERVICE, instance(7202))
        .await
        .expect("register");
    eventually("caller follows after its expiry", CONVERGE, || {
        addrs(&list) == ["10.0.0.1:7201", "10.0.0.1:7202"]
    })
    .await;

    finish(&raw, &root, &[&caller, &server, &other]).await;
}

// ---------------------------------------------------------------- configuration

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Limits {
    max_connections: u32,
    mode: String,
}

fn limits(max_connections: u32) -> Limits {
    Limits {
        max_connections,
        mode: "strict".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_watch_follows_the_node() {
    let hosts = shared_hosts().await;
    let root = unique_root();
    let raw = raw(&hosts).await;
    let node = format!("{root}/config/limits");
    // The root can come with the address.
    let url = format!("zk://{hosts}{root}");
    let reader = ZooKeeper::connect_url(&url, config("/ignored"))
        .await
        .expect("connect url");
    assert_eq!(reader.root(), root);
    let writer = connect(&hosts, &root).await;

    let mut config = reader
        .watch_config::<Limits>("limits")
        .await
        .expect("watch");
    assert_eq!(config.get(), None);

    writer
        .set_config("limits", &limits(1))
        .await
        .expect("create");
    config.changed().await.expect("changed");
    assert_eq!(config.get(), Some(limits(1)));
    writer
        .set_config("limits", &limits(2))
        .await
        .expect("update");
    eventually("updated value", CONVERGE, || {
        config.get() == Some(limits(2))
    })
    .await;

    // A value that does not parse is skipped; the last good one stays. Every value the
    // watch takes is recorded until the next good one arrives, which it can only do after
    // the garbage was read: nothing but the last good value may come between.
    let mut values = config.subscribe();
    values.borrow_and_update();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.last() != Some(&Some(limits(3))) {
            values.changed().await.expect("still watching");
            seen.push(values.borrow_and_update().clone());
        }
        seen
    });
    raw.set_data(&node, b"{\"max_connections\": \"many\"}", None)
        .await
        .expect("set bad");
    let late = reader
        .watch_config::<Limits>("limits")
        .await
        .expect("watch bad");
    assert_eq!(late.get(), None, "a fresh watch has no good value to keep");

    writer
        .set_config("limits", &limits(3))
        .await
        .expect("update");
    let seen = tokio::time::timeout(CONVERGE, seen)
        .await
        .expect("value after garbage")
        .expect("join");
    assert!(
        seen.iter()
            .all(|v| *v == Some(limits(2)) || *v == Some(limits(3))),
        "last good value stays until the next: {seen:?}"
    );
    assert_eq!(config.get(), Some(limits(3)));
    eventually("fresh watch sees it too", CONVERGE, || {
        late.get() == Some(limits(3))
    })
    .await;

    raw.delete(&node, None).await.expect("delete");
    eventually("deleted node reads as None", CONVERGE, || {
        config.get().is_none()
    })
    .await;
    writer
        .set_config("limits", &limits(4))
        .await
        .expect("create again");
    eventually("created again", CONVERGE, || {
        config.get() == Some(limits(4))
    })
    .await;

    finish(&raw, &root, &[&reader, &writer]).await;
}

// ---------------------------------------------------------------- election

fn leaders(elections: &[Option<mprpc::zookeeper::Election>]) -> Vec<usize> {
    let mut leaders = Vec::new();
    for (i, election) in elections.iter().enumerate() {
        if election.as_ref().is_some_and(|e| e.is_leader()) {
            leaders.push(i);
        }
    }
    leaders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_fails_over() {
    let hosts = shared_hosts().await;
    let root = unique_root();
    let raw = raw(&hosts).await;
    let dir = format!("{root}/election/scheduler");
    let mut zks = Vec::new();
    let mut links = Vec::new();
    let mut elections = Vec::new();
    for i in 0..3 {
        let (link, zk) = connect_relayed(&hosts, &root).await;
        links.push(link);
        elections.push(Some(
            zk.elect("scheduler", &format!("c{i}"))
                .await
                .expect("elect"),
        ));
        zks.push(zk);
    }
    eventually("exactly one leader", CONVERGE, || {
        leaders(&elections).len() == 1
    })
    .await;
    let first = leaders(&elections)[0];
    assert_eq!(
        zks[0].leader("scheduler").await.expect("leader"),
        Some(format!("c{first}"))
    );
    assert_eq!(ls(&raw, &dir).await.len(), 3);

    // The leader's session ends: the next candidate in line leads within the session
    // timeout, and its watch says so.
    let next = (first + 1) % 3;
    let mut standing = elections[next].as_ref().expect("candidate").watch();
    assert!(!*standing.borrow_and_update(), "c{next} waits its turn");
    let killed = Instant::now();
    zks[first].close().await;
    eventually("a new leader", SESSION_TIMEOUT, || {
        let now = leaders(&elections);
        now.len() == 1 && now[0] != first
    })
    .await;
    let took = killed.elapsed();
    assert!(took < SESSION_TIMEOUT, "failover took {took:?}");
    let second = leaders(&elections)[0];
    assert_eq!(second, next, "candidates lead in the order they entered");
    let leads = tokio::time::timeout(CONVERGE, standing.wait_for(|leads| *leads));
    drop(
        leads
            .await
            .expect("the new leader's watch turned true")
            .expect("the candidacy is still followed"),
    );
    assert!(!elections[first].as_ref().expect("old leader").is_leader());
    let survivor = 3 - first - second;
    let leader = elections[second]
        .as_ref()
        .expect("new leader")
        .leader()
        .await
        .expect("leader");
    assert_eq!(leader, Some(format!("c{second}")));

    // A follower whose session expires joins again in its new session.
    expire(&hosts, &links[survivor], &zks[survivor]).await;
    eventually_async("follower back in the election", CONVERGE, async || {
        ls(&raw, &dir).await.len() == 2
    })
    .await;
    eventually("still one leader", CONVERGE, || {
        leaders(&elections) == [second]
    })
    .await;

    // Resigning hands the lead over at once.
    elections[second].take().expect("leader").resign().await;
    eventually("the last candidate leads", CONVERGE, || {
        leaders(&elections) == [survivor]
    })
    .await;
    assert_eq!(
        zks[survivor].leader("scheduler").await.expect("leader"),
        Some(format!("c{survivor}"))
    );

    finish(&raw, &root, &zks.iter().collect::<Vec<_>>()).await;
}

// ---------------------------------------------------------------- ZooKeeper restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_restart_keeps_lists_and_registrations_come_back() {
    init_logs();
    let mut server = zk::PrivateZk::start().await;
    let hosts = server.hosts();
    let root = "/mprpc";
    let dir = format!("{root}/services/{SERVICE}");

    let caller = connect(&hosts, root).await;
    let list = caller.subscribe(SERVICE).await.expect("subscribe");
    let mut servers = Vec::new();
    let mut registrations = Vec::new();
    for port in [7301, 7302] {
        let zk = connect(&hosts, root).await;
        registrations.push(
            zk.register(SERVICE, instance(port))
                .await
                .expect("register"),
        );
        servers.push(zk);
    }
    let both = ["10.0.0.1:7301", "10.0.0.1:7302"];
    eventually("2 instances", CONVERGE, || addrs(&list) == both).await;
    let before: BTreeSet<i64> = servers.iter().filter_map(|s| s.session_id()).collect();

    server.kill();
    eventually("caller notices the outage", CONVERGE, || {
        !caller.is_connected()
    })
    .await;
    // Down for longer than 1.4 session timeouts: the clients give their sessions up.
    holds(
        "list kept while ZooKeeper is down",
        SESSION_TIMEOUT * 2,
        || addrs(&list) == both,
    )
    .await;

    server.restart().await;
    let raw = raw(&hosts).await;
    eventually_async(
        "registrations back under new sessions",
        CONVERGE,
        async || {
            let now: BTreeSet<i64> = servers.iter().filter_map(|s| s.session_id()).collect();
            let mut owners = BTreeSet::new();
            for child in ls(&raw, &dir).await {
                owners.extend(owner(&raw, &format!("{dir}/{child}")).await);
            }
            now.len() == 2 && now.is_disjoint(&before) && owners == now
        },
    )
    .await;
    eventually("list converges", CONVERGE, || addrs(&list) == both).await;
    assert!(caller.is_connected());

    // The registrations kept across sessions still withdraw cleanly.
    for registration in registrations {
        registration.deregister().await;
    }
    assert!(ls(&raw, &dir).await.is_empty());
    eventually("list empties", CONVERGE, || addrs(&list).is_empty()).await;
}
