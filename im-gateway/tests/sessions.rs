//! Sessions end everywhere: at the token's expiry, at a revocation whose kick event was
//! lost (the periodic re-check), on every transport; a login whose route cannot be bound
//! is refused.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use im_common::bus::{Bus, BusResult, PubSub, memory::Memory};
use im_common::ids::now_ms;
use im_common::proto::{Empty, Event, event};
use im_common::store::users::UserStore;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Logout, Ping, Request, Resume};
use prost::Message as _;
use support::term::{PASSWORD, Term};
use support::*;
use tokio::sync::mpsc;

/// Re-checks often, so that the tests see them.
fn checking_every(ms: u64) -> Settings {
    Settings {
        session_check_ms: ms,
        ..settings()
    }
}

/// Waits for the end of `client`'s session: its Kicked reason, after which a request is
/// not answered and the connection closes.
async fn ended(client: &mut Client) -> String {
    let reason = match client.push_where(|b| matches!(b, Body::Kicked(_))).await {
        Body::Kicked(kicked) => kicked.reason,
        _ => unreachable!(),
    };
    let request = Request {
        id: 999,
        command: Some(Command::ListFriends(Empty {})),
    };
    client.try_send(&request).await;
    let seen = client.closed().await;
    assert!(seen.iter().all(|m| m.id != 999), "answered after: {seen:?}");
    reason
}

#[tokio::test]
async fn an_expired_token_ends_its_connections_at_the_expiry() {
    // Tokens live 1 s (rounded up to the next second: 1 to 2 s).
    let cluster =
        Cluster::start_with(Bus::in_process(), false, TokenTtl(1), Faults::default()).await;
    let gateway = cluster
        .gateway_with_legacy("gw-expiry", settings(), 1024)
        .await;
    let name = name("ada");
    let mut tcp = Client::tcp(gateway.tcp).await;
    let session = tcp.register_login(&name, "phone").await;
    let mut ws = Client::ws(gateway.ws, true).await;
    ws.login(&name, "laptop").await;
    let mut term = Term::connect(gateway.legacy.unwrap()).await;
    term.ok(&format!("LOGIN {name} {PASSWORD}")).await;

    assert_eq!(ended(&mut tcp).await, "session expired");
    // Not before the expiry (give or take the clocks' millisecond).
    assert!(now_ms() >= session.expires_at_ms - 5, "ended early");
    assert_eq!(ended(&mut ws).await, "session expired");
    assert_eq!(
        term.line().await.as_deref(),
        Some("-ERR session ended: session expired")
    );
    assert_eq!(term.line().await, None);
    gateway.stopped().await;
    cluster.close().await;
}

/// Pub/sub that loses every kick event, and counts them.
struct LosesKicks {
    inner: Arc<Memory>,
    lost: AtomicUsize,
}

impl PubSub for LosesKicks {
    fn publish(&self, channel: String, payload: Bytes) -> BoxFuture<'_, BusResult<()>> {
        if let Ok(Event {
            event: Some(event::Event::Kick(_)),
        }) = Event::decode(payload.clone())
        {
            self.lost.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Ok(()) });
        }
        self.inner.publish(channel, payload)
    }

    fn subscribe(&self, channel: String) -> BoxFuture<'_, BusResult<mpsc::Receiver<Bytes>>> {
        self.inner.subscribe(channel)
    }
}

#[tokio::test]
async fn a_logout_whose_kick_was_lost_ends_the_session_at_the_next_check() {
    let memory = Arc::new(Memory::new());
    let pubsub = Arc::new(LosesKicks {
        inner: memory.clone(),
        lost: AtomicUsize::new(0),
    });
    let mut bus = Bus::new(memory);
    bus.pubsub = pubsub.clone();
    let cluster = Cluster::start(bus, false).await;
    let gateway = cluster.gateway("gw-lost-kick", checking_every(300)).await;
    let mut phone = Client::tcp(gateway.tcp).await;
    let session = phone.register_login(&name("ada"), "phone").await;
    // The same session on a second connection.
    let mut again = Client::ws(gateway.ws, false).await;
    again
        .ok(Command::Resume(Resume {
            token: session.token.clone(),
            ..Resume::default()
        }))
        .await;

    phone.ok(Command::Logout(Logout {})).await;
    phone.closed().await;
    assert!(pubsub.lost.load(Ordering::SeqCst) >= 1, "the kick was lost");
    let logged_out = tokio::time::Instant::now();
    assert_eq!(ended(&mut again).await, "session revoked");
    // Within the interval and one call (with room for a slow test machine).
    assert!(logged_out.elapsed() < Duration::from_secs(3));
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_session_revoked_in_the_database_ends_on_every_transport() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster
        .gateway_with_legacy("gw-revoked", checking_every(200), 1024)
        .await;
    let name = name("ada");
    let mut tcp = Client::tcp(gateway.tcp).await;
    tcp.register_login(&name, "phone").await;
    let mut term = Term::connect(gateway.legacy.unwrap()).await;
    let uid = term.login(&name).await;
    let mut other = Client::tcp(gateway.tcp).await;
    other.register_login(&support::name("bob"), "phone").await;

    // Revoked with no kick event at all.
    let revoked = cluster.sql.revoke_sessions(uid, now_ms()).await.unwrap();
    assert_eq!(revoked, 2);
    assert_eq!(ended(&mut tcp).await, "session revoked");
    assert_eq!(
        term.line().await.as_deref(),
        Some("-ERR session ended: session revoked")
    );
    assert_eq!(term.line().await, None);
    // Another user's session goes on.
    assert!(matches!(
        other.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_failed_check_keeps_the_connection_until_a_check_answers() {
    let faults = Faults::default();
    let cluster = Cluster::start_with(
        Bus::in_process(),
        false,
        TokenTtl::default(),
        faults.clone(),
    )
    .await;
    let gateway = cluster.gateway("gw-check-down", checking_every(200)).await;
    let mut ada = Client::tcp(gateway.tcp).await;
    let session = ada.register_login(&name("ada"), "phone").await;
    faults.check_sessions.store(true, Ordering::SeqCst);
    cluster
        .sql
        .revoke_session(session.user_id, &session.session_id, now_ms())
        .await
        .unwrap();

    // Two rounds of failed checks (each visits every session once).
    let deadline = tokio::time::Instant::now() + WAIT;
    while faults.failed.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no check was made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        ada.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));
    assert!(
        ada.pending_pushes().is_empty(),
        "{:?}",
        ada.pending_pushes()
    );

    faults.check_sessions.store(false, Ordering::SeqCst);
    assert_eq!(ended(&mut ada).await, "session revoked");
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_login_whose_route_cannot_be_bound_fails() {
    let faults = Faults::default();
    let cluster = Cluster::start_with(
        Bus::in_process(),
        false,
        TokenTtl::default(),
        faults.clone(),
    )
    .await;
    let gateway = cluster
        .gateway_with_legacy("gw-no-route", settings(), 1024)
        .await;
    let name = name("ada");
    let mut ada = Client::tcp(gateway.tcp).await;
    ada.ok(Command::Register(im_proto::RegisterRequest {
        name: name.clone(),
        password: PASSWORD.to_owned(),
        nickname: String::new(),
    }))
    .await;
    faults.bind_route.store(true, Ordering::SeqCst);

    let reply = ada
        .call(Command::Login(im_proto::client::Login {
            name: name.clone(),
            password: PASSWORD.to_owned(),
            device_id: "phone".to_owned(),
            ..Default::default()
        }))
        .await;
    let error = reply.error.expect("the login fails");
    assert_eq!(error.code, Code::Unavailable as i32, "{error:?}");
    assert!(error.retryable);
    // Not logged in: a command is refused, and no route names the connection.
    let reply = ada.call(Command::ListFriends(Empty {})).await;
    assert_eq!(reply.error.unwrap().code, Code::Unauthenticated as i32);
    let mut term = Term::connect(gateway.legacy.unwrap()).await;
    let why = term.err(&format!("LOGIN {name} {PASSWORD}")).await;
    assert!(why.contains("log in again"), "{why}");
    assert_eq!(term.err("GETFRIENDS").await, "not login");

    // Once presence answers, the same connection logs in.
    faults.bind_route.store(false, Ordering::SeqCst);
    let session = ada.login(&name, "phone").await;
    let routes = cluster
        .bus
        .routes
        .query(vec![session.user_id])
        .await
        .unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(matches!(
        ada.ok(Command::ListFriends(Empty {})).await,
        Body::Profiles(_)
    ));
    gateway.stopped().await;
    cluster.close().await;
}

/// One user's route bind that hangs in presence holds up nobody else's login, not even
/// users whose logins used to share its lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_route_bind_holds_up_no_other_login() {
    let faults = Faults::default();
    let cluster = Cluster::start_with(
        Bus::in_process(),
        false,
        TokenTtl::default(),
        faults.clone(),
    )
    .await;
    // Far longer than the test waits: a lane stuck behind the held call stays stuck.
    let settings = Settings {
        call_timeout_ms: 120_000,
        ..settings()
    };
    let gateway = cluster.gateway(&name("gw-slow-bind-"), settings).await;
    let ada_name = name("ada");
    let mut ada = Client::tcp(gateway.tcp).await;
    let Body::Profile(profile) = ada
        .ok(Command::Register(im_proto::RegisterRequest {
            name: ada_name.clone(),
            password: PASSWORD.to_owned(),
            nickname: String::new(),
        }))
        .await
    else {
        panic!("a profile")
    };
    faults
        .hold_binds_of
        .store(profile.user_id, Ordering::SeqCst);
    let held = tokio::spawn(async move {
        ada.login(&ada_name, "phone").await;
        ada
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while faults.holding.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bind never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Sixteen users after Ada: every user id modulo any small lane count, hers included.
    for _ in 0..16 {
        let mut other = Client::tcp(gateway.tcp).await;
        other.register_login(&name("other"), "phone").await;
    }
    assert!(!held.is_finished(), "Ada's bind was not held");
    faults.release_binds();
    let ada = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(ada.user_id(), profile.user_id);
    cluster.close().await;
}
