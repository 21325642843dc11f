//! Fixtures for the group service's tests: a database on either engine, users written
//! straight into it, and the service over the in-process bus behind an in-process client.

#![allow(dead_code, unreachable_pub)]

use im_common::bus::Bus;
use im_common::identity::{self, ServiceIdentity, User};
use im_common::proto::{CreateGroupRequest, GroupServiceClient, JoinPolicy};
use im_common::store::Sql;
use im_group::{Groups, Settings};
use mprpc::CallOptions;

/// `count` new users named `<prefix>-<n>`; their ids in order.
pub async fn add_users(sql: &Sql, prefix: &str, count: usize) -> Vec<u64> {
    let names: Vec<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    for chunk in names.chunks(200) {
        let rows = vec!["(?, '', ?, '', '', 0)"; chunk.len()].join(", ");
        let insert = format!(
            "INSERT INTO users (name, password_hash, nickname, avatar, bio, created_at) VALUES {rows}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for name in chunk {
            query = query.bind(name.clone()).bind(name.clone());
        }
        query.execute(sql.pool()).await.unwrap();
    }
    let mut ids = Vec::with_capacity(count);
    for name in &names {
        let id: i64 = sqlx::query_scalar("SELECT user_id FROM users WHERE name = ?")
            .bind(name.clone())
            .fetch_one(sql.pool())
            .await
            .unwrap();
        ids.push(u64::try_from(id).unwrap());
    }
    ids
}

/// One new user.
pub async fn add_user(sql: &Sql, name: &str) -> u64 {
    add_users(sql, name, 1).await[0]
}

/// The group service over `sql` and `bus`, and a client to it that calls as the gateway.
pub fn service(sql: &Sql, bus: &Bus, settings: Settings) -> (mprpc::Server, GroupServiceClient) {
    let server = im_group::server(Groups::new(sql.clone(), bus.clone(), settings));
    let client = mprpc::Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(&server);
    (server, GroupServiceClient::new(client))
}

/// The service with default settings on an in-process bus.
pub fn default_service(sql: &Sql) -> (mprpc::Server, GroupServiceClient) {
    service(sql, &Bus::in_process(), Settings::default())
}

/// Call options acting for `user`.
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

/// A create request.
pub fn create(name: &str, policy: JoinPolicy, members: &[u64]) -> CreateGroupRequest {
    CreateGroupRequest {
        name: name.to_owned(),
        description: String::new(),
        join_policy: policy as i32,
        member_ids: members.to_vec(),
    }
}

/// The code and message of a failed call.
pub fn failure<T: std::fmt::Debug>(result: Result<T, mprpc::Error>) -> (mprpc::Code, String) {
    match result {
        Ok(value) => panic!("expected a failure, got {value:?}"),
        Err(mprpc::Error::Status(status)) => (status.code(), status.message().to_owned()),
        Err(err) => panic!("expected a status, got {err}"),
    }
}
