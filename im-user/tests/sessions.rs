//! CheckSessions on SQLite and MariaDB: which sessions have ended (revoked, expired,
//! unknown), and its bounds.

mod support;

use im_common::bus::Bus;
use im_common::ids::now_ms;
use im_common::on_both;
use im_common::proto::{CheckSessionsRequest, LogoutRequest};
use im_common::store::Sql;
use im_common::store::users::{Session, UserStore};
use mprpc::Code;
use support::*;

on_both!(ended_sessions_are_named);
on_both!(batches_are_bounded);

fn ids(ids: &[&str]) -> CheckSessionsRequest {
    CheckSessionsRequest {
        session_ids: ids.iter().map(|&id| id.to_owned()).collect(),
    }
}

async fn ended_sessions_are_named(sql: Sql) {
    let (_server, client) = service(&sql, &Bus::in_process(), auth());
    let ada = register(&client, "ada").await;
    register(&client, "bob").await;
    let out = login(&client, "ada", PASSWORD, "phone").await.unwrap();
    let live = login(&client, "ada", PASSWORD, "laptop").await.unwrap();
    let bob = login(&client, "bob", PASSWORD, "phone").await.unwrap();
    client
        .logout_with(
            &LogoutRequest {
                token: String::new(),
            },
            &in_session(ada, &out.session_id),
        )
        .await
        .unwrap();
    // A session whose token has expired (nobody revoked it).
    let now = now_ms();
    sql.create_session(Session {
        session_id: "expired-session".to_owned(),
        user_id: ada,
        device_id: "tablet".to_owned(),
        created_at_ms: now - 10_000,
        expires_at_ms: now - 1,
        revoked_at_ms: None,
    })
    .await
    .unwrap();

    let asked = [
        out.session_id.as_str(),
        live.session_id.as_str(),
        bob.session_id.as_str(),
        "never-issued",
        "expired-session",
        out.session_id.as_str(),
    ];
    let mut ended = client
        .check_sessions(&ids(&asked))
        .await
        .unwrap()
        .ended_session_ids;
    ended.sort();
    let mut expected = vec![
        out.session_id.clone(),
        "never-issued".to_owned(),
        "expired-session".to_owned(),
    ];
    expected.sort();
    assert_eq!(
        ended, expected,
        "each ended session once, the live ones not"
    );
    let none = client.check_sessions(&ids(&[])).await.unwrap();
    assert!(none.ended_session_ids.is_empty());
}

async fn batches_are_bounded(sql: Sql) {
    let (_server, client) = service(&sql, &Bus::in_process(), auth());
    let full: Vec<String> = (0..im_user::MAX_CHECK).map(|i| format!("s{i}")).collect();
    let reply = client
        .check_sessions(&CheckSessionsRequest {
            session_ids: full.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply.ended_session_ids.len(), im_user::MAX_CHECK);

    let mut over = full;
    over.push("one-more".to_owned());
    let refused = failure(
        client
            .check_sessions(&CheckSessionsRequest { session_ids: over })
            .await,
    );
    assert_eq!(
        refused,
        (
            Code::InvalidArgument,
            "session_ids has 1001 ids, more than the limit of 1000".to_owned()
        )
    );
    let (code, message) = failure(client.check_sessions(&ids(&["ok", ""])).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "session_ids[1] must be 1 to 128 bytes");
}
