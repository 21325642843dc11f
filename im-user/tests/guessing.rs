//! Password guessing through the real Login rpc: failed logins are limited per account name
//! and per client address, and every refusal looks the same, whether the name exists, the
//! password is wrong or a limit was reached. On both databases, in process and on Redis.

mod support;

use std::time::Duration;

use im_common::bus::Bus;
use im_common::bus::testing::with_redis;
use im_common::on_both;
use im_common::store::Sql;
use im_user::AuthSettings;
use mprpc::Code;
use support::*;

on_both!(
    by_name_in_process,
    a_guessed_name_is_locked_for_the_window_in_process
);
on_both!(
    by_name_on_redis,
    a_guessed_name_is_locked_for_the_window_on_redis
);
on_both!(by_addr_in_process, a_guessing_address_is_locked_in_process);
on_both!(by_addr_on_redis, a_guessing_address_is_locked_on_redis);

fn limits(per_name: u64, per_addr: u64, window_secs: u64) -> AuthSettings {
    AuthSettings {
        login_max_failures_per_name: per_name,
        login_max_failures_per_addr: per_addr,
        login_failure_window_secs: window_secs,
        ..auth()
    }
}

/// What every refused login looks like.
fn refused() -> (Code, String) {
    (Code::Unauthenticated, "wrong name or password".to_owned())
}

async fn a_guessed_name_is_locked_for_the_window_in_process(sql: Sql) {
    a_guessed_name_is_locked_for_the_window(sql, Bus::in_process()).await;
}

async fn a_guessed_name_is_locked_for_the_window_on_redis(sql: Sql) {
    with_redis(|bus| a_guessed_name_is_locked_for_the_window(sql, bus)).await;
}

async fn a_guessed_name_is_locked_for_the_window(sql: Sql, bus: Bus) {
    let (_server, client) = service(&sql, &bus, limits(3, 0, 1));
    register(&client, "ada").await;
    // Unknown name and wrong password: the same refusal.
    assert_eq!(failure(login(&client, "nobody", "x", "d").await), refused());
    for n in 0..3 {
        let guess = format!("guess {n}");
        assert_eq!(failure(login(&client, "ada", &guess, "d").await), refused());
    }
    // Three failures: even the right password is refused now, in the same words.
    assert_eq!(
        failure(login(&client, "ada", PASSWORD, "d").await),
        refused()
    );
    // Another account is not affected (no address given: no per-address limit).
    register(&client, "bob").await;
    login(&client, "bob", PASSWORD, "d").await.unwrap();
    // The window (1 s from the first failure) ends: the right password works again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while login(&client, "ada", PASSWORD, "d").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "still locked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_guessing_address_is_locked_in_process(sql: Sql) {
    a_guessing_address_is_locked(sql, Bus::in_process()).await;
}

async fn a_guessing_address_is_locked_on_redis(sql: Sql) {
    with_redis(|bus| a_guessing_address_is_locked(sql, bus)).await;
}

async fn a_guessing_address_is_locked(sql: Sql, bus: Bus) {
    let (_server, client) = service(&sql, &bus, limits(100, 4, 600));
    for name in ["acc1", "acc2", "acc3", "acc4", "victim"] {
        register(&client, name).await;
    }
    let attacker = "203.0.113.7";
    // One guess at each of four accounts, one of them unknown: under every name's limit.
    for name in ["acc1", "acc2", "acc3", "ghost"] {
        let result = login_from(&client, name, "wrong", attacker).await;
        assert_eq!(failure(result), refused());
    }
    // The address is locked: a fifth account, right password and all, is refused from it...
    let locked = login_from(&client, "victim", PASSWORD, attacker).await;
    assert_eq!(failure(locked), refused());
    let unknown = login_from(&client, "ghost2", "x", attacker).await;
    assert_eq!(failure(unknown), refused());
    // ...and works from anywhere else.
    login_from(&client, "victim", PASSWORD, "198.51.100.1")
        .await
        .unwrap();
    login_from(&client, "acc4", PASSWORD, "2001:db8::1")
        .await
        .unwrap();
}
