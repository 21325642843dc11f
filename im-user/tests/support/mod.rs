//! Fixtures for the user service's tests: a database on either engine, a handler over the
//! in-process bus, a client that calls as the gateway, and users registered through it.

#![allow(dead_code, unreachable_pub)]

use im_common::bus::Bus;
use im_common::identity::{self, ServiceIdentity, User};
use im_common::proto::{LoginReply, LoginRequest, RegisterRequest, UserServiceClient};
use im_common::store::Sql;
use im_user::{AuthSettings, Users};
use mprpc::{CallOptions, Code};

/// The token secret the tests sign with.
pub const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";
/// The password every test user has.
pub const PASSWORD: &str = "correct horse battery";

/// Auth settings with the test secret and a tiny argon2 work factor.
pub fn auth() -> AuthSettings {
    AuthSettings {
        jwt_secret: SECRET.to_owned(),
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        ..AuthSettings::default()
    }
}

/// A user service over `sql` and `bus`, and a client to it that calls as the gateway.
pub fn service(sql: &Sql, bus: &Bus, auth: AuthSettings) -> (mprpc::Server, UserServiceClient) {
    let users = Users::new(sql.clone(), bus.clone(), auth).expect("valid settings");
    let server = im_user::server(users);
    let client = mprpc::Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(&server);
    (server, UserServiceClient::new(client))
}

/// Call options acting for `user`.
pub fn as_user(user: u64) -> CallOptions {
    identity::for_user(CallOptions::new(), &User::new(user))
}

/// Call options acting for `user` in `session`.
pub fn in_session(user: u64, session: &str) -> CallOptions {
    let mut user = User::new(user).on_device("dev");
    user.session = session.to_owned();
    identity::for_user(CallOptions::new(), &user)
}

/// Registers `name` with [`PASSWORD`]; returns the user id.
pub async fn register(client: &UserServiceClient, name: &str) -> u64 {
    client
        .register(&RegisterRequest {
            name: name.to_owned(),
            password: PASSWORD.to_owned(),
            nickname: String::new(),
        })
        .await
        .unwrap_or_else(|err| panic!("register {name}: {err}"))
        .user_id
}

/// Logs `name` in on `device`.
pub async fn login(
    client: &UserServiceClient,
    name: &str,
    password: &str,
    device: &str,
) -> Result<LoginReply, mprpc::Error> {
    client
        .login(&LoginRequest {
            name: name.to_owned(),
            password: password.to_owned(),
            device_id: device.to_owned(),
            client_addr: String::new(),
        })
        .await
}

/// Logs `name` in from client address `addr`.
pub async fn login_from(
    client: &UserServiceClient,
    name: &str,
    password: &str,
    addr: &str,
) -> Result<LoginReply, mprpc::Error> {
    client
        .login(&LoginRequest {
            name: name.to_owned(),
            password: password.to_owned(),
            device_id: "dev".to_owned(),
            client_addr: addr.to_owned(),
        })
        .await
}

/// The code and message of a failed call.
pub fn failure<T: std::fmt::Debug>(result: Result<T, mprpc::Error>) -> (Code, String) {
    match result {
        Ok(value) => panic!("expected a failure, got {value:?}"),
        Err(mprpc::Error::Status(status)) => (status.code(), status.message().to_owned()),
        Err(other) => panic!("expected a status, got {other}"),
    }
}
