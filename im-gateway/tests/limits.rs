//! Timeouts, presence pushes and the connection limit. The memory an idle connection costs
//! is measured in `idle_memory.rs`, a process of its own.

mod support;

use std::time::Duration;

use im_common::bus::Bus;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Ping, Request};
use support::*;

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_pinging_one_is_not() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let quick = Settings {
        idle_timeout_ms: 400,
        ..settings()
    };
    let gateway = cluster.gateway("gw-idle", quick).await;
    let mut quiet = Client::tcp(gateway.tcp).await;
    quiet.register_login(&name("quiet"), "d").await;
    let mut chatty = Client::ws(gateway.ws, true).await;
    chatty.register_login(&name("chatty"), "d").await;
    // The quiet one is closed meanwhile, the pinging one is not.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        chatty.ok(Command::Ping(Ping {})).await;
    }
    let seen = quiet.closed().await;
    let error = seen
        .last()
        .and_then(|m| m.error.clone())
        .expect("why it closed");
    assert_eq!(error.code, Code::DeadlineExceeded as i32);
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn friends_see_each_other_come_and_go() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let gateway = cluster.gateway("gw-presence", settings()).await;
    let (ada, bob) = (name("ada"), name("bob"));
    let mut first = Client::tcp(gateway.tcp).await;
    first.register_login(&ada, "d").await;
    let mut other = Client::tcp(gateway.tcp).await;
    other.register_login(&bob, "d").await;
    let bob_id = other.user_id();
    befriend(&mut first, &mut other).await;
    drop(other);
    drop(first);
    // The friend list is read when a user's first connection logs in.
    let mut watcher = Client::tcp(gateway.tcp).await;
    let mut again = Client::tcp(gateway.tcp).await;
    wait_until_offline(&cluster, bob_id).await;
    watcher.login(&ada, "d").await;
    again.login(&bob, "d").await;
    let online = |b: &Body| matches!(b, Body::Presence(p) if p.user_id == bob_id && p.online);
    watcher.push_where(online).await;
    drop(again);
    let offline = |b: &Body| matches!(b, Body::Presence(p) if p.user_id == bob_id && !p.online);
    watcher.push_where(offline).await;

    // A friendship made while both are connected here counts at once.
    let mut cy = Client::tcp(gateway.tcp).await;
    cy.register_login(&name("cy"), "d").await;
    befriend(&mut cy, &mut watcher).await;
    drop(cy);
    let cy_offline = |b: &Body| matches!(b, Body::Presence(p) if !p.online && p.user_id != bob_id);
    watcher.push_where(cy_offline).await;
    gateway.stopped().await;
    cluster.close().await;
}

async fn wait_until_offline(cluster: &Cluster, user: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cluster
        .bus
        .routes
        .query(vec![user])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "route stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_or_are_refused() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let two = Settings {
        max_connections: 2,
        ..settings()
    };
    let gateway = cluster.gateway("gw-full", two).await;
    let mut first = Client::tcp(gateway.tcp).await;
    first.ok(Command::Ping(Ping {})).await;
    let second = Client::ws(gateway.ws, false).await;
    // WebSocket beyond the limit: refused at the upgrade.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.ws)).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("upgraded beyond the limit: {refused:?}")
    };
    assert_eq!(response.status(), 503);
    // TCP beyond the limit: waits in the backlog until a connection closes.
    let mut third = Client::tcp(gateway.tcp).await;
    third
        .send(&Request {
            id: 1,
            command: Some(Command::Ping(Ping {})),
        })
        .await;
    drop(second);
    let pong = third.next().await.unwrap();
    assert!(matches!(pong.body, Some(Body::Pong(_))), "{pong:?}");
    gateway.stopped().await;
    cluster.close().await;
}
