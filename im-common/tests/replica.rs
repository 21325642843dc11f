//! With a read replica configured, lag-tolerant reads (profiles, member lists) go to it and
//! everything else, message sync above all, stays on the primary. The "replica" here is a
//! second database that nothing replicates into, so each read shows where it went.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

use im_common::config::DatabaseConfig;
use im_common::ids::ConversationId;
use im_common::proto::{JoinPolicy, MessageKind};
use im_common::store::groups::{GroupStore, NewGroup};
use im_common::store::messages::{MessageStore, NewMessage};
use im_common::store::testing::TestDb;
use im_common::store::users::{NewUser, UserStore};
use im_common::store::{Sql, replica};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_tolerant_reads_go_to_the_replica_and_sync_never_does() {
    let primary_db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let replica_db = TestDb::mysql().await.unwrap();
    // Each schema migrated on its own; writes below go to one side only.
    let replica = Sql::connect(&replica_db.config()).await.unwrap();
    let sql = Sql::connect(&DatabaseConfig {
        replica_url: Some(replica_db.url.clone()),
        // Nothing replicates into this "replica": its lag is not measured here.
        replica_max_lag_ms: 0,
        ..primary_db.config()
    })
    .await
    .unwrap();

    let user = |name: &str| NewUser {
        name: name.into(),
        password_hash: "x".into(),
        nickname: name.into(),
    };
    let on_primary = sql.create_user(user("ada")).await.unwrap();
    let on_replica = replica.create_user(user("ghost")).await.unwrap();
    assert_eq!(
        on_primary.user_id, on_replica.user_id,
        "both databases start their ids at 1"
    );
    // Profiles are read from the replica: it has "ghost" where the primary has "ada".
    assert_eq!(
        sql.user(on_primary.user_id).await.unwrap().unwrap().name,
        "ghost"
    );
    // Credentials (login) come from the primary.
    assert!(sql.credentials("ada").await.unwrap().is_some());
    assert!(sql.credentials("ghost").await.unwrap().is_none());

    // Member lists from the replica; membership checks from the primary.
    let group = NewGroup {
        name: "g".into(),
        description: String::new(),
        join_policy: JoinPolicy::Open,
        owner: on_primary.user_id,
        members: vec![],
    };
    let created = sql.create_group(&group).await.unwrap();
    assert!(
        sql.member(created.group_id, on_primary.user_id)
            .await
            .unwrap()
            .is_some()
    );
    let (members, _) = sql.members(created.group_id, 0, 10).await.unwrap();
    assert!(
        members.is_empty(),
        "the member list was read from the replica"
    );

    // Sync reads the primary, never the replica.
    let message = NewMessage {
        conversation: ConversationId::direct(1, 2),
        sender: 1,
        client_msg_id: "m1".into(),
        kind: MessageKind::Text,
        body: "hello".into(),
        ref_msg_id: 0,
    };
    let ids = std::sync::atomic::AtomicU64::new(1);
    let next = || ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sql.commit(std::slice::from_ref(&message), &next)
        .await
        .unwrap();
    let (synced, _, last) = sql.sync(message.conversation, 0, 10).await.unwrap();
    assert_eq!((synced.len(), last), (1, 1));

    sql.close().await;
    replica.close().await;
    primary_db.drop().await.unwrap();
    replica_db.drop().await.unwrap();
}

/// A TCP relay to the MySQL test server that can be cut: while it is down it closes every
/// relayed connection and each new one at once, as a replica that died would.
struct Relay {
    addr: std::net::SocketAddr,
    target: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(String::new()));
        let down = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (to, is_down, held) = (Arc::clone(&target), Arc::clone(&down), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = to.lock().clone();
                held.lock().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Relay {
            addr,
            target,
            down,
            conns,
        }
    }

    fn target(&self, server: String) {
        *self.target.lock() = server;
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().drain(..) {
            conn.abort();
        }
    }

    fn mend(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// `mysql://user@host:port/db` as its `host:port` and the URL with `host:port` replaced by
/// `relay`.
fn relayed(url: &str, relay: std::net::SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let (user, server) = authority.rsplit_once('@').unwrap();
    (
        server.to_owned(),
        format!("{scheme}://{user}@{relay}/{path}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_primary_while_the_replica_is_down_then_back() {
    let primary_db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let replica_db = TestDb::mysql().await.unwrap();
    let replica = Sql::connect(&replica_db.config()).await.unwrap();
    let relay = Relay::start().await;
    let (server, url) = relayed(&replica_db.url, relay.addr);
    relay.target(server);

    // A replica that is down when the service starts does not keep it from starting.
    relay.cut();
    let sql = Sql::connect(&DatabaseConfig {
        replica_url: Some(url),
        replica_max_lag_ms: 0,
        ..primary_db.config()
    })
    .await
    .expect("starts while its replica is down");
    let user = |name: &str| NewUser {
        name: name.into(),
        password_hash: "x".into(),
        nickname: name.into(),
    };
    let id = sql.create_user(user("ada")).await.unwrap().user_id;
    let ghost = replica.create_user(user("ghost")).await.unwrap().user_id;
    assert_eq!(id, ghost, "both databases start their ids at 1");
    let name = |sql: &Sql| {
        let sql = sql.clone();
        async move {
            sql.user(id)
                .await
                .expect("a profile read never fails")
                .unwrap()
                .name
        }
    };
    assert_eq!(name(&sql).await, "ada", "read from the primary");

    // The replica comes back: within its retry interval reads go to it again.
    relay.mend();
    let deadline = Instant::now() + replica::RETRY_AFTER * 3;
    while name(&sql).await != "ghost" {
        assert!(
            Instant::now() < deadline,
            "reads never went back to the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It dies with connections open: every read still answers, from the primary.
    relay.cut();
    for _ in 0..5 {
        assert_eq!(name(&sql).await, "ada");
    }
    let (members, _) = sql.members(1, 0, 10).await.unwrap();
    assert!(members.is_empty());
    assert!(sql.user_by_name("ada").await.unwrap().is_some());
    assert_eq!(sql.users(&[id]).await.unwrap().len(), 1);

    sql.close().await;
    replica.close().await;
    primary_db.drop().await.unwrap();
    replica_db.drop().await.unwrap();
}

/// Stamps the replica's heartbeat row as replication would copy the primary's.
async fn replicate_heartbeat(replica: &Sql) {
    sqlx::query("UPDATE replica_heartbeat SET beat_ms = ? WHERE id = 1")
        .bind(im_common::ids::now_ms())
        .execute(replica.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_primary_while_the_replica_is_behind() {
    let primary_db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let replica_db = TestDb::mysql().await.unwrap();
    let replica = Sql::connect(&replica_db.config()).await.unwrap();
    let user = |name: &str| NewUser {
        name: name.into(),
        password_hash: "x".into(),
        nickname: name.into(),
    };
    let ghost = replica.create_user(user("ghost")).await.unwrap().user_id;
    let sql = Sql::connect(&DatabaseConfig {
        replica_url: Some(replica_db.url.clone()),
        replica_max_lag_ms: 1_000,
        ..primary_db.config()
    })
    .await
    .unwrap();
    let id = sql.create_user(user("ada")).await.unwrap().user_id;
    assert_eq!(id, ghost, "both databases start their ids at 1");
    let name = || async { sql.user(id).await.unwrap().unwrap().name };
    let within = |what: &'static str| {
        let deadline = Instant::now() + replica::BEAT * 10;
        move || assert!(Instant::now() < deadline, "{what}")
    };

    // Nothing replicated the primary's heartbeats: the replica is taken for behind.
    let check = within("reads never left a replica that is behind");
    while name().await != "ada" {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It catches up (its heartbeat row is fresh): reads go back to it.
    let check = within("reads never went back to a replica that caught up");
    loop {
        replicate_heartbeat(&replica).await;
        if name().await == "ghost" {
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Replication stops: once its stamp is older than 1 s, reads leave it again.
    let check = within("reads stayed on a replica that stopped replicating");
    while name().await != "ada" {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    sql.close().await;
    replica.close().await;
    primary_db.drop().await.unwrap();
    replica_db.drop().await.unwrap();
}
