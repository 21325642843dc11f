//! `im-group` as its own process on MariaDB and ZooKeeper: it registers, serves a group's
//! life through discovery, counts the calls on `/metrics`, and on SIGTERM deregisters and
//! exits cleanly; a bad config stops it at start with one line naming the key.

mod support;

use im_common::proto::{
    Empty, GroupId, GroupRole, GroupServiceClient, JoinPolicy, JoinRequest, MembersRequest,
};
use im_common::serve::testing::{
    ConfigFile, ServiceProcess, http_get, local_config, refused, unique_root, wait_for, zookeeper,
};
use im_common::store::Sql;
use im_common::store::testing::TestDb;
use support::{add_user, as_user, create};

const BINARY: &str = env!("CARGO_BIN_EXE_im-group");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_groups_through_discovery_and_stops_on_sigterm() {
    let db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let sql = Sql::connect(&db.config()).await.unwrap();
    let (ada, bob, cy) = (
        add_user(&sql, "ada").await,
        add_user(&sql, "bob").await,
        add_user(&sql, "cy").await,
    );
    let root = unique_root();
    let config = ConfigFile::new(
        "im-group.toml",
        &format!("{}[database]\nurl = \"{}\"\n", local_config(&root), db.url),
    );
    let process = ServiceProcess::start(BINARY, &config.path);
    let discovery = zookeeper(&root).await;
    let client = GroupServiceClient::new(
        discovery
            .client("gateway", "mpim.GroupService", 0)
            .await
            .unwrap(),
    );
    wait_for("registration", async || {
        !client.inner().instances().is_empty()
    })
    .await;

    // The owner is the caller of the metadata, whatever the body names.
    let group = client
        .create_with(&create("club", JoinPolicy::Open, &[bob]), &as_user(ada))
        .await
        .unwrap();
    assert_eq!((group.owner_id, group.member_count), (ada, 2));
    let id = GroupId {
        group_id: group.group_id,
    };
    let join = JoinRequest {
        group_id: group.group_id,
        message: String::new(),
    };
    assert!(client.join_with(&join, &as_user(cy)).await.unwrap().joined);
    client.leave_with(&id, &as_user(bob)).await.unwrap();

    let page = MembersRequest {
        group_id: group.group_id,
        after_user_id: 0,
        limit: 10,
    };
    let members = client.members_with(&page, &as_user(cy)).await.unwrap();
    let roles: Vec<(u64, i32)> = members
        .members
        .iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert_eq!(
        roles,
        [
            (ada, GroupRole::Owner as i32),
            (cy, GroupRole::Member as i32)
        ]
    );
    let mine = client
        .my_groups_with(&Empty {}, &as_user(bob))
        .await
        .unwrap();
    assert!(mine.groups.is_empty(), "{mine:?}");
    let info = client.info_with(&id, &as_user(cy)).await.unwrap();
    assert_eq!(info.member_count, 2);

    let metrics = http_get(&process.metrics, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(
            r#"mprpc_server_requests_total{service="mpim.GroupService",method="Join",code="OK"} 1"#
        ),
        "{metrics}"
    );

    assert!(process.terminate(), "im-group exits 0 on SIGTERM");
    wait_for("deregistration", async || {
        client.inner().instances().is_empty()
    })
    .await;
    sql.close().await;
    db.drop().await.unwrap();
}

#[test]
fn a_bad_config_stops_it_with_one_line_naming_the_key() {
    for (config, key) in [
        ("[server]\nlisten = 5\n", "server.listen"),
        ("[server]\nlisen = \"127.0.0.1:0\"\n", "server.lisen"),
        ("[group]\nmax_members = 0\n", "group.max_members"),
    ] {
        let stderr = refused(BINARY, config);
        assert!(stderr.contains(key), "{config:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{config:?}: {stderr}");
    }
}
