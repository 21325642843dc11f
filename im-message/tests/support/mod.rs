//! Fixtures for the message service's tests: a database on either engine, users, friends,
//! blocks and groups written straight into it, and a handler over the in-process bus.

#![allow(dead_code, unreachable_pub)]

use im_common::bus::Bus;
use im_common::identity::{self, ServiceIdentity, User};
use im_common::ids::now_ms;
use im_common::proto::MessageServiceClient;
use im_common::store::Sql;
use im_message::{Messages, Settings};
use mprpc::CallOptions;

pub fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap()
}

pub async fn add_user(sql: &Sql, name: &str) -> u64 {
    let result = sqlx::query(
        "INSERT INTO users (name, password_hash, nickname, avatar, bio, created_at) VALUES (?, '', ?, '', '', ?)",
    )
    .bind(name.to_owned())
    .bind(name.to_owned())
    .bind(now_ms())
    .execute(sql.pool())
    .await
    .unwrap();
    match result.last_insert_id() {
        Some(id) => u64::try_from(id).unwrap(),
        None => {
            let id: i64 = sqlx::query_scalar("SELECT user_id FROM users WHERE name = ?")
                .bind(name.to_owned())
                .fetch_one(sql.pool())
                .await
                .unwrap();
            u64::try_from(id).unwrap()
        }
    }
}

pub async fn befriend(sql: &Sql, a: u64, b: u64) {
    for (x, y) in [(a, b), (b, a)] {
        sqlx::query("INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, 0)")
            .bind(i(x))
            .bind(i(y))
            .execute(sql.pool())
            .await
            .unwrap();
    }
}

pub async fn block(sql: &Sql, blocker: u64, blocked: u64) {
    sqlx::query("INSERT INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, 0)")
        .bind(i(blocker))
        .bind(i(blocked))
        .execute(sql.pool())
        .await
        .unwrap();
}

/// A group owned by `owner` with `members`; returns its id.
pub async fn add_group(sql: &Sql, owner: u64, members: &[u64]) -> u64 {
    let name = format!("group-{owner}-{}", rand_suffix());
    sqlx::query(
        "INSERT INTO chat_groups (name, description, owner_id, join_policy, mute_all, created_at) VALUES (?, '', ?, 0, 0, 0)",
    )
    .bind(name.clone())
    .bind(i(owner))
    .execute(sql.pool())
    .await
    .unwrap();
    let gid: i64 = sqlx::query_scalar("SELECT group_id FROM chat_groups WHERE name = ?")
        .bind(name)
        .fetch_one(sql.pool())
        .await
        .unwrap();
    let gid = u64::try_from(gid).unwrap();
    sqlx::query("INSERT INTO conversations (conv_id, last_seq, updated_at) VALUES (?, 0, 0)")
        .bind(format!("g:{gid}"))
        .execute(sql.pool())
        .await
        .unwrap();
    let everyone: Vec<(u64, i64)> = std::iter::once((owner, 3))
        .chain(members.iter().map(|&m| (m, 1)))
        .collect();
    for chunk in everyone.chunks(200) {
        let rows = vec!["(?, ?, ?, 0, 0)"; chunk.len()].join(", ");
        let insert = format!(
            "INSERT INTO group_members (group_id, user_id, role, muted_until, joined_at) VALUES {rows}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for (user, role) in chunk {
            query = query.bind(i(gid)).bind(i(*user)).bind(*role);
        }
        query.execute(sql.pool()).await.unwrap();
        let rows = vec!["(?, ?, 0)"; chunk.len()].join(", ");
        let insert = format!("INSERT INTO conv_members (conv_id, user_id, read_seq) VALUES {rows}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for (user, _) in chunk {
            query = query.bind(format!("g:{gid}")).bind(i(*user));
        }
        query.execute(sql.pool()).await.unwrap();
    }
    gid
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Test settings: the defaults with friends-only on.
pub fn settings() -> Settings {
    Settings::default()
}

/// A message service over `sql` and `bus`, and a client to it that calls as the gateway.
pub fn service(sql: &Sql, bus: &Bus, settings: Settings) -> (mprpc::Server, MessageServiceClient) {
    let server = im_message::server(Messages::new(sql.clone(), bus.clone(), settings));
    let client = mprpc::Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(&server);
    (server, MessageServiceClient::new(client))
}

/// Call options acting for `user` on device `dev-<user>`.
pub fn as_user(user: u64) -> CallOptions {
    identity::for_user(
        CallOptions::new(),
        &User::new(user).on_device(format!("dev-{user}")),
    )
}

/// The status code of a failed call.
pub fn code<T: std::fmt::Debug>(result: Result<T, mprpc::Error>) -> mprpc::Code {
    match result {
        Ok(value) => panic!("expected a failure, got {value:?}"),
        Err(err) => err.code(),
    }
}

pub async fn message_rows(sql: &Sql, conv: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE conv_id = ?")
        .bind(conv.to_owned())
        .fetch_one(sql.pool())
        .await
        .unwrap()
}
