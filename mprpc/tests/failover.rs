//! Failover without processes: in-process servers behind a registry, taken away under a
//! stream of calls or re-weighted; and ZooKeeper itself restarted under load.

mod support;
#[path = "support/zk.rs"]
mod zk;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mprpc::balance::{ConsistentHash, RoundRobin, WeightedRandom};
use mprpc::discovery::{InProcess, Instance};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};
use mprpc::{CallOptions, Client, Method, Server};
use support::{Num, PROBE, Probe, eventually};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SLEEP: Method = Method::new(PROBE, "Sleep");

/// One registered in-process instance.
struct Instance3 {
    addr: String,
    probe: Probe,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(registry: impl mprpc::discovery::Register + Clone) -> Instance3 {
    let probe = Probe::default();
    let server = Server::builder()
        .add_service(probe.clone())
        .grace_period(Duration::from_secs(5))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let instance = Instance::new(addr.clone());
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        server
            .serve_registered(listener, &registry, instance, shutdown)
            .await
            .expect("serve");
    });
    Instance3 {
        addr,
        probe,
        stop: Some(stop),
        task,
    }
}

/// An instance whose registration outlives its server task, as a crashed process's
/// ZooKeeper node outlives it until the session times out.
async fn start_crashable(registry: &InProcess) -> (Instance3, mprpc::discovery::Registration) {
    let probe = Probe::default();
    let server = Server::builder().add_service(probe.clone()).build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let registration =
        mprpc::discovery::Register::register(registry, PROBE, Instance::new(addr.clone()))
            .await
            .expect("register");
    let task = tokio::spawn(async move {
        server
            .serve(listener, std::future::pending())
            .await
            .expect("serve");
    });
    (
        Instance3 {
            addr,
            probe,
            stop: None,
            task,
        },
        registration,
    )
}

fn calls(probe: &Probe) -> u64 {
    probe.counters.finished.load(Ordering::SeqCst)
}

struct Stream {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    workers: tokio::task::JoinSet<()>,
}

fn stream(client: &Client, total: u64, concurrency: usize, options: CallOptions) -> Stream {
    let (ok, failed, next) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, options) = (client.clone(), options.clone());
        let (ok, failed, next) = (ok.clone(), failed.clone(), next.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match client
                    .unary::<_, Num>(&SLEEP, &Num { value: 1 }, &options)
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        eprintln!("call failed: {err}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    Stream {
        ok,
        failed,
        workers,
    }
}

impl Stream {
    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    async fn finish(mut self) -> (u64, u64) {
        while let Some(done) = self.workers.join_next().await {
            done.expect("worker");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Three instances registered in `registry`.
async fn start_three(registry: &InProcess) -> Vec<Instance3> {
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start(registry.clone()).await);
    }
    instances
}

/// A client of `registry`'s instances, once it lists all three.
async fn discover_three(builder: mprpc::ClientBuilder, registry: &InProcess) -> Client {
    let client = builder.discover(registry, PROBE).await.expect("discover");
    assert!(eventually(Duration::from_secs(5), || client.instances().len() == 3).await);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_costs_idempotent_callers_nothing() {
    let registry = InProcess::new();
    let (mut instances, mut registrations) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (instance, registration) = start_crashable(&registry).await;
        instances.push(instance);
        registrations.push(registration);
    }
    // Once ejected, the dead instance stays out for the rest of the test: with the default
    // one second, a stream slowed down by a loaded machine could outlast the ejection and
    // find it being probed again.
    let minute = Duration::from_secs(60);
    let builder = Client::builder()
        .balance(RoundRobin)
        .ejection(5, minute, minute);
    let client = discover_three(builder, &registry).await;
    let calls_stream = stream(&client, 4000, 16, CallOptions::new().idempotent(true));
    assert!(eventually(Duration::from_secs(10), || calls_stream.done() >= 500).await);
    // A crash: the task, its listener and its connections vanish; the registry entry stays.
    instances[0].task.abort();
    assert!(calls_stream.done() < 4000, "crashed under the stream");
    let (ok, failed) = calls_stream.finish().await;
    assert_eq!((ok, failed), (4000, 0));
    let dead = client
        .endpoints()
        .into_iter()
        .find(|e| e.instance().addr == instances[0].addr)
        .expect("still listed");
    assert!(!dead.is_available(), "the dead instance was ejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_costs_non_idempotent_callers_nothing() {
    let registry = InProcess::new();
    let mut instances = start_three(&registry).await;
    let client = discover_three(Client::builder(), &registry).await;
    let calls_stream = stream(&client, 4000, 16, CallOptions::new());
    assert!(eventually(Duration::from_secs(10), || calls_stream.done() >= 500).await);
    let _ = instances[0].stop.take().expect("running").send(());
    assert!(calls_stream.done() < 4000, "stopped under the stream");
    let (ok, failed) = calls_stream.finish().await;
    assert_eq!((ok, failed), (4000, 0));
    assert!(
        eventually(Duration::from_secs(5), || client.instances().len() == 2).await,
        "deregistered"
    );
    (&mut instances[0].task)
        .await
        .expect("serve returned after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_pins_a_key_to_one_instance() {
    let registry = InProcess::new();
    let instances = start_three(&registry).await;
    let client = discover_three(
        Client::builder().balance(ConsistentHash::default()),
        &registry,
    )
    .await;
    for user in ["alice", "bob", "carol", "dave"] {
        let before: Vec<u64> = instances.iter().map(|i| calls(&i.probe)).collect();
        let options = CallOptions::new().hash_key(user);
        for _ in 0..20 {
            client
                .unary::<_, Num>(&SLEEP, &Num { value: 0 }, &options)
                .await
                .expect("call");
        }
        let grew: Vec<usize> = instances
            .iter()
            .enumerate()
            .filter(|(i, s)| calls(&s.probe) > before[*i])
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            grew.len(),
            1,
            "all of {user}'s calls reached one instance: {grew:?}"
        );
    }
}

#[tokio::test]
async fn a_weight_change_keeps_the_endpoint_and_its_connection() {
    let server = support::start_server().await;
    let relay = support::relay::Relay::start(server.addr.to_string()).await;
    let registry = InProcess::new();
    let instance = Instance::new(relay.hosts()).id("only");
    let register = |instance| mprpc::discovery::Register::register(&registry, PROBE, instance);
    let _first = register(instance.clone()).await.expect("register");
    let client = Client::builder()
        .pool_size(1)
        .balance(WeightedRandom)
        .discover(&registry, PROBE)
        .await
        .expect("discover");
    let options = CallOptions::new();
    let call = || client.unary::<_, Num>(&SLEEP, &Num { value: 0 }, &options);
    call().await.expect("first call");
    let before = client.endpoints()[0].clone();

    // The same instance (id and address) comes back with another weight.
    let _second = register(instance.weight(300)).await.expect("re-register");
    let reweighted = || client.instances().first().is_some_and(|i| i.weight == 300);
    assert!(eventually(Duration::from_secs(5), reweighted).await);
    let after = client.endpoints()[0].clone();
    assert!(Arc::ptr_eq(&before, &after), "the endpoint was kept");
    assert_eq!(after.instance().weight, 300);
    assert_eq!(after.weight(), 300, "what weighted balancers read");
    call().await.expect("call after the change");
    assert_eq!(
        after.attempts(),
        2,
        "both calls counted on the one endpoint"
    );
    assert_eq!(
        relay.accepted(),
        1,
        "the second call used the first connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_zookeeper_restarts() {
    let mut server = zk::PrivateZk::start().await;
    let config = || {
        ZkConfig::default()
            .root("/mprpc-restart")
            .session_timeout(Duration::from_secs(8))
    };
    let mut registries = Vec::new();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let registry = ZooKeeper::connect(&server.hosts(), config())
            .await
            .expect("connect");
        instances.push(start(registry.clone()).await);
        registries.push(registry);
    }
    let discovery = ZooKeeper::connect(&server.hosts(), config())
        .await
        .expect("connect");
    let client = Client::builder()
        .discover(&discovery, PROBE)
        .await
        .expect("discover");
    assert!(eventually(Duration::from_secs(10), || client.instances().len() == 3).await);

    let calls_stream = stream(&client, 6000, 16, CallOptions::new());
    assert!(eventually(Duration::from_secs(10), || calls_stream.done() >= 1000).await);
    server.kill();
    // ZooKeeper is down: the client keeps its last list and calls keep succeeding.
    let at_kill = calls_stream.done();
    assert!(
        eventually(Duration::from_secs(10), || calls_stream.done()
            >= at_kill + 1000)
        .await
    );
    assert_eq!(client.instances().len(), 3);
    server.restart().await;
    let (ok, failed) = calls_stream.finish().await;
    assert_eq!((ok, failed), (6000, 0));
    // After the restart the instances are (still or again) registered and the list holds.
    assert!(eventually(Duration::from_secs(20), || client.instances().len() == 3).await);
    let listed: Vec<String> = client.instances().into_iter().map(|i| i.addr).collect();
    for instance in &instances {
        assert!(
            listed.contains(&instance.addr),
            "{} listed after the restart",
            instance.addr
        );
    }
}
