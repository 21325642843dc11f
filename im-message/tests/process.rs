//! `im-message` as its own process on MariaDB and ZooKeeper: it registers, serves
//! `/metrics`, loses nothing acknowledged when killed with SIGKILL and started again, and on
//! SIGTERM deregisters and exits cleanly; a bad config stops it at start with one line naming
//! the key.

mod support;

use std::time::{Duration, Instant};

use im_common::config::{DiscoveryConfig, TlsConfig};
use im_common::proto::{MessageServiceClient, SendRequest, SyncRequest};
use im_common::serve::Discovery;
use im_common::serve::testing::{ServiceProcess, http_get, refused, unique_root, wait_for};
use im_common::store::Sql;
use im_common::store::testing::TestDb;
use support::*;

fn start(config: &std::path::Path) -> ServiceProcess {
    ServiceProcess::start(env!("CARGO_BIN_EXE_im-message"), config)
}

#[test]
fn a_bad_config_stops_it_with_one_line_naming_the_key() {
    for (config, key) in [
        (
            "[message]\nmax_body_bytes = \"lots\"\n",
            "message.max_body_bytes",
        ),
        ("[message]\nfrends_only = false\n", "message.frends_only"),
        (
            "[database]\nmax_connections = -1\n",
            "database.max_connections",
        ),
    ] {
        let stderr = refused(env!("CARGO_BIN_EXE_im-message"), config);
        assert!(stderr.contains(key), "{config:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{config:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_and_stops_on_sigterm() {
    let db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let sql = Sql::connect(&db.config()).await.unwrap();
    let (a, b) = (add_user(&sql, "ada").await, add_user(&sql, "bob").await);
    befriend(&sql, a, b).await;

    let root = unique_root();
    let dir = std::env::temp_dir().join(format!("im-message-{}", root.trim_start_matches('/')));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("im-message.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ngrace_period_ms = 2000\n\
             [discovery]\nzookeeper = \"127.0.0.1:2181\"\nroot = \"{root}\"\nsession_timeout_ms = 4000\n\
             [database]\nurl = \"{}\"\n",
            db.url
        ),
    )
    .unwrap();

    let mut first = Some(start(&config));
    let discovery = Discovery::connect(
        &DiscoveryConfig {
            zookeeper: Some("127.0.0.1:2181".into()),
            root: root.clone(),
            ..DiscoveryConfig::default()
        },
        &TlsConfig::default(),
    )
    .await
    .unwrap();
    let client = MessageServiceClient::new(
        discovery
            .client("test", "mpim.MessageService", 0)
            .await
            .unwrap(),
    );
    wait_for("registration", async || {
        !client.inner().instances().is_empty()
    })
    .await;

    // Sends in flight when the process is killed: whatever was acked must survive.
    let mut sends = Vec::new();
    for n in 0..200 {
        let client = client.clone();
        sends.push(tokio::spawn(async move {
            let request = SendRequest {
                to_user_id: b,
                client_msg_id: format!("k{n}"),
                body: format!("n{n}"),
            };
            let options = as_user(a).timeout(Duration::from_secs(20));
            client.send_with(&request, &options).await
        }));
        if n == 100 {
            let mut killed = first.take().unwrap();
            killed.child.kill().unwrap();
            killed.child.wait().unwrap();
        }
    }
    // Sends that failed with the process are resent (same client_msg_id) to the new one.
    let second = start(&config);
    let mut acked = Vec::new();
    for (n, send) in sends.into_iter().enumerate() {
        let ack = match send.await.unwrap() {
            Ok(ack) => ack,
            Err(_) => resend(&client, a, b, n).await,
        };
        acked.push(ack);
    }
    let conv = acked[0].conversation_id.clone();
    let synced = client
        .sync_with(
            &SyncRequest {
                conversation_id: conv,
                after_seq: 0,
                limit: 500,
            },
            &as_user(b),
        )
        .await
        .unwrap()
        .messages;
    assert_eq!(synced.len(), 200, "every message stored once");
    let seqs: Vec<u64> = synced.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    for ack in &acked {
        assert!(
            synced
                .iter()
                .any(|m| m.msg_id == ack.msg_id && m.seq == ack.seq),
            "ack {ack:?} lost"
        );
    }

    let metrics = http_get(&second.metrics, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("mpim_messages_stored_total"), "{metrics}");

    // SIGTERM: deregistered, then a clean exit.
    assert!(second.terminate(), "im-message exits 0 on SIGTERM");
    // The killed process's node goes when its session expires; the stopped one's at once.
    wait_for("deregistration", async || {
        client.inner().instances().is_empty()
    })
    .await;
    sql.close().await;
    db.drop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Resends message `n` until an instance takes it, as a client would: the killed process
/// stays listed until its ZooKeeper session expires, and calls to it fail until then.
async fn resend(
    client: &MessageServiceClient,
    a: u64,
    b: u64,
    n: usize,
) -> im_common::proto::SendAck {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = SendRequest {
            to_user_id: b,
            client_msg_id: format!("k{n}"),
            body: format!("n{n}"),
        };
        match client.send_with(&request, &as_user(a)).await {
            Ok(ack) => return ack,
            Err(err) if Instant::now() < deadline => {
                eprintln!("resend of k{n} failed ({err}); trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("resend of k{n} failed until the deadline: {err}"),
        }
    }
}
