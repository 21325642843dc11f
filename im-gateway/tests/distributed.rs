//! MPIM as separate processes — each service binary and two gateways — on MariaDB, Redis
//! and ZooKeeper (`scripts/services.sh up`): users on the two gateways chat 1:1 and in a
//! group; one gateway is killed with SIGKILL; its users reconnect to the other, resume and
//! sync, and every acknowledged message is there exactly once, in order.
//!
//! The same again with a Redis Cluster in place of the single Redis (the nodes in
//! `TEST_REDIS_CLUSTER`, as `scripts/redis-cluster.sh up` starts them; without it that test
//! fails under `TEST_STRICT` and otherwise passes with a note): the services read it from
//! their config files, the gateways from `MPIM_REDIS__CLUSTER`.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};

use im_common::serve::testing::{ConfigFile, ServiceProcess, local_config, unique_root};
use im_common::store::testing::TestDb;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Cursor, Resume};
use im_proto::{
    ChatMessage, CreateGroupRequest, SendAck, SendGroupRequest, SendRequest, SyncRequest,
};
use support::{Client, befriend, name};

/// A binary of this workspace, beside this test's own directory (`cargo test --workspace`
/// builds every binary before it runs tests); built here when missing.
fn binary(package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(package);
    if !path.exists() {
        let status = Process::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", package])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p {package}");
    }
    path
}

/// Which Redis the deployment runs on.
#[derive(Debug, Clone)]
enum Redis {
    /// The server at `TEST_REDIS_URL`.
    Single,
    /// A cluster, reached through these nodes.
    Cluster(Vec<String>),
}

impl Redis {
    /// The `[redis]` section for config files.
    fn section(&self, prefix: &str) -> String {
        match self {
            Redis::Single => format!(
                "[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n",
                im_common::bus::testing::redis_url()
            ),
            Redis::Cluster(nodes) => {
                format!("[redis]\ncluster = {nodes:?}\nprefix = \"{prefix}\"\n")
            }
        }
    }

    /// The environment that points a process at it (the gateways take it this way).
    fn env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        let server = match self {
            Redis::Single => ("MPIM_REDIS__URL", im_common::bus::testing::redis_url()),
            Redis::Cluster(nodes) => ("MPIM_REDIS__CLUSTER", nodes.join(",")),
        };
        vec![server, ("MPIM_REDIS__PREFIX", prefix.to_owned())]
    }

    /// Deletes every key the deployment wrote.
    async fn clear(&self, prefix: &str) {
        let url = im_common::bus::testing::redis_url();
        let redis = match self {
            Redis::Single => im_common::bus::redis::Redis::connect_with_prefix(&url, prefix).await,
            Redis::Cluster(nodes) => {
                im_common::bus::redis::Redis::connect_cluster(nodes, prefix).await
            }
        };
        redis.unwrap().clear().await.expect("clear the test prefix");
    }
}

/// The sections every process of this deployment shares.
fn shared(root: &str, db: &TestDb, redis: &Redis, prefix: &str) -> String {
    format!(
        "{}[database]\nurl = \"{}\"\n{}",
        local_config(root),
        db.url,
        redis.section(prefix)
    )
}

/// A gateway process and the address its clients connect to.
struct GatewayProcess {
    child: Child,
    tcp: SocketAddr,
    _config: ConfigFile,
}

impl GatewayProcess {
    fn start(root: &str, redis: &Redis, prefix: &str, id: &str) -> GatewayProcess {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [ws]\nlisten = \"off\"\n\
             [discovery]\nzookeeper = \"{}\"\nroot = \"{root}\"\nsession_timeout_ms = 4000\n\
             [gateway]\nid = \"{id}\"\nheartbeat_ms = 1000\nshutdown_grace_ms = 500\n",
            im_common::serve::testing::ZOOKEEPER,
        );
        let config = ConfigFile::new("im-gateway.toml", &text);
        let mut child = Process::new(binary("im-gateway"))
            .arg("--config")
            .arg(&config.path)
            .envs(redis.env(prefix))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway starts");
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut tcp = None;
        loop {
            let line = lines.next().expect("the gateway logs").expect("text");
            eprintln!("{line}");
            if line.contains("listening") && line.contains("tcp=") {
                let addr = line
                    .split("tcp=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next());
                tcp = addr.map(|a| a.parse().expect("an address"));
            }
            if line.contains("metrics at /metrics") {
                break;
            }
        }
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
        GatewayProcess {
            child,
            tcp: tcp.expect("the gateway logged its client address"),
            _config: config,
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(client: &mut Client, to: u64, id: &str) -> SendAck {
    let request = SendRequest {
        to_user_id: to,
        client_msg_id: id.to_owned(),
        body: format!("text of {id}"),
    };
    match client.ok(Command::Send(request)).await {
        Body::Ack(ack) => ack,
        other => panic!("{other:?}"),
    }
}

async fn send_group(client: &mut Client, group: u64, id: &str) -> SendAck {
    let request = SendGroupRequest {
        group_id: group,
        client_msg_id: id.to_owned(),
        body: format!("text of {id}"),
    };
    match client.ok(Command::SendGroup(request)).await {
        Body::Ack(ack) => ack,
        other => panic!("{other:?}"),
    }
}

/// Waits for a pushed message with `msg_id`.
async fn pushed(client: &mut Client, msg_id: u64) -> ChatMessage {
    match client
        .push_where(|body| matches!(body, Body::Message(m) if m.msg_id == msg_id))
        .await
    {
        Body::Message(message) => message,
        _ => unreachable!(),
    }
}

/// Everything in `conversation` after `after`, paging through.
async fn sync(client: &mut Client, conversation: &str, mut after: u64) -> Vec<ChatMessage> {
    let mut all = Vec::new();
    loop {
        let request = SyncRequest {
            conversation_id: conversation.to_owned(),
            after_seq: after,
            limit: 50,
        };
        let Body::Synced(page) = client.ok(Command::Sync(request)).await else {
            panic!("synced")
        };
        after = page.messages.last().map_or(after, |m| m.seq);
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// Each acknowledged message is in `history` once, and the seqs run 1, 2, 3, …
fn assert_whole(history: &[ChatMessage], acks: &[SendAck]) {
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(seqs, expected, "gapless, in order");
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for message in history {
        *count.entry(message.msg_id).or_default() += 1;
    }
    for ack in acks {
        assert_eq!(
            count.get(&ack.msg_id),
            Some(&1),
            "acked {} once",
            ack.msg_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_gateways_survive_losing_one() {
    users_on_two_gateways_survive_losing_one_on(Redis::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_gateways_survive_losing_one_on_a_redis_cluster() {
    let Some(nodes) = im_common::bus::testing::redis_cluster_nodes() else {
        return;
    };
    users_on_two_gateways_survive_losing_one_on(Redis::Cluster(nodes)).await;
}

async fn users_on_two_gateways_survive_losing_one_on(redis: Redis) {
    let db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let root = unique_root();
    let prefix = format!("e2e:{}:", rand::random::<u32>());
    let common = shared(&root, &db, &redis, &prefix);
    let mut services = Vec::new();
    for (package, extra) in [
        (
            "im-user",
            "[auth]\njwt_secret = \"a test secret of at least thirty-two bytes\"\n\
             argon2_memory_kib = 1024\n",
        ),
        ("im-presence", ""),
        ("im-message", ""),
        ("im-group", ""),
    ] {
        // Presence keeps nothing in the database.
        let text = match package {
            "im-presence" => common.replace(&format!("[database]\nurl = \"{}\"\n", db.url), ""),
            _ => common.clone(),
        };
        let config = ConfigFile::new(&format!("{package}.toml"), &format!("{text}{extra}"));
        services.push((
            ServiceProcess::start(binary(package).to_str().unwrap(), &config.path),
            config,
        ));
    }
    let gw_a = GatewayProcess::start(&root, &redis, &prefix, &format!("{prefix}gw-a"));
    let gw_b = GatewayProcess::start(&root, &redis, &prefix, &format!("{prefix}gw-b"));

    // ada and cy on gateway A, bob on B.
    let mut ada = Client::tcp(gw_a.tcp).await;
    let mut cy = Client::tcp(gw_a.tcp).await;
    let mut bob = Client::tcp(gw_b.tcp).await;
    let ada_session = ada.register_login(&name("ada"), "laptop").await;
    cy.register_login(&name("cy"), "phone").await;
    bob.register_login(&name("bob"), "desk").await;
    befriend(&mut ada, &mut bob).await;
    let (ada_id, bob_id, cy_id) = (ada.user_id(), bob.user_id(), cy.user_id());

    // 1:1 across the gateways, both ways.
    let mut direct = Vec::new();
    let ack = send(&mut ada, bob_id, "a-1").await;
    assert_eq!(pushed(&mut bob, ack.msg_id).await.sender_id, ada_id);
    direct.push(ack);
    let ack = send(&mut bob, ada_id, "b-1").await;
    assert_eq!(pushed(&mut ada, ack.msg_id).await.body, "text of b-1");
    direct.push(ack);

    // A group of three across both gateways.
    let create = CreateGroupRequest {
        name: "trio".into(),
        member_ids: vec![bob_id, cy_id],
        ..CreateGroupRequest::default()
    };
    let Body::Group(group) = ada.ok(Command::CreateGroup(create)).await else {
        panic!("group")
    };
    let mut grouped = Vec::new();
    let ack = send_group(&mut bob, group.group_id, "g-1").await;
    pushed(&mut ada, ack.msg_id).await;
    pushed(&mut cy, ack.msg_id).await;
    grouped.push(ack);

    // Gateway A dies at once; ada and cy lose their connections.
    let mut gw_a = gw_a;
    gw_a.child.kill().expect("SIGKILL");
    gw_a.child.wait().expect("reaped");
    assert!(ada.closed().await.iter().all(|m| m.id == 0));
    cy.closed().await;

    // Meanwhile bob goes on writing to both conversations.
    for i in 2..=6 {
        direct.push(send(&mut bob, ada_id, &format!("b-{i}")).await);
        grouped.push(send_group(&mut bob, group.group_id, &format!("g-{i}")).await);
    }

    // ada reconnects to gateway B and resumes from what she had seen.
    let mut ada = Client::tcp(gw_b.tcp).await;
    let cursors = vec![
        Cursor {
            conversation_id: direct[0].conversation_id.clone(),
            last_seq: 2,
        },
        Cursor {
            conversation_id: grouped[0].conversation_id.clone(),
            last_seq: 1,
        },
    ];
    let resume = Resume {
        token: ada_session.token.clone(),
        cursors,
        ..Resume::default()
    };
    let Body::Resumed(resumed) = ada.ok(Command::Resume(resume)).await else {
        panic!("resumed")
    };
    ada.session = resumed.session.clone();
    let behind: BTreeMap<String, (u64, u64)> = resumed
        .behind
        .iter()
        .map(|b| (b.conversation_id.clone(), (b.after_seq, b.last_seq)))
        .collect();
    assert_eq!(behind[&direct[0].conversation_id], (2, 7));
    assert_eq!(behind[&grouped[0].conversation_id], (1, 6));
    let missed = sync(&mut ada, &direct[0].conversation_id, 2).await;
    let bodies: Vec<&str> = missed.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "text of b-2",
            "text of b-3",
            "text of b-4",
            "text of b-5",
            "text of b-6"
        ]
    );
    assert_eq!(
        sync(&mut ada, &grouped[0].conversation_id, 1).await.len(),
        5
    );

    // A resend of a message whose ack was lost with the gateway stores nothing new.
    let again = send(&mut ada, bob_id, "a-1").await;
    assert_eq!(again.msg_id, direct[0].msg_id);
    assert!(again.duplicate);

    // Pushes now reach ada through gateway B, in both directions.
    let ack = send(&mut bob, ada_id, "b-7").await;
    pushed(&mut ada, ack.msg_id).await;
    direct.push(ack);
    let ack = send(&mut ada, bob_id, "a-2").await;
    pushed(&mut bob, ack.msg_id).await;
    direct.push(ack);

    // The whole history: every acknowledged message exactly once, gapless.
    assert_whole(
        &sync(&mut bob, &direct[0].conversation_id, 0).await,
        &direct,
    );
    assert_whole(
        &sync(&mut ada, &grouped[0].conversation_id, 0).await,
        &grouped,
    );

    drop(gw_b);
    for (service, _config) in services {
        assert!(service.terminate(), "a service exits 0 on SIGTERM");
    }
    db.drop().await.expect("drop the test database");
    redis.clear(&prefix).await;
}
