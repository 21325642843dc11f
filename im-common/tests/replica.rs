//! With a read replica configured, lag-tolerant reads (profiles, member lists) go to it and
//! everything else, message sync above all, stays on the primary. The "replica" here is a
//! second database that nothing replicates into, so each read shows where it went.

use im_common::config::DatabaseConfig;
use im_common::ids::ConversationId;
use im_common::proto::{JoinPolicy, MessageKind};
use im_common::store::Sql;
use im_common::store::groups::{GroupStore, NewGroup};
use im_common::store::messages::{MessageStore, NewMessage};
use im_common::store::testing::TestDb;
use im_common::store::users::{NewUser, UserStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_tolerant_reads_go_to_the_replica_and_sync_never_does() {
    let primary_db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let replica_db = TestDb::mysql().await.unwrap();
    // Each schema migrated on its own; writes below go to one side only.
    let replica = Sql::connect(&replica_db.config()).await.unwrap();
    let sql = Sql::connect(&DatabaseConfig {
        replica_url: Some(replica_db.url.clone()),
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
