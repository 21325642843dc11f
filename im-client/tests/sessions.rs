//! Sessions across connections against a scripted gateway: GoAway, kicks, a refused resume,
//! sends made while disconnected, and the WebSocket transport.

mod support;

use futures::{SinkExt, StreamExt};
use im_client::im_proto::client::request::Command;
use im_client::im_proto::client::server_message::Body;
use im_client::im_proto::client::{Code, GoAway, Kicked, Pong, Request, Resumed, ServerMessage};
use im_client::im_proto::{PresenceChanged, SendAck};
use im_client::{Client, Error, Event, Events, Options};
use prost::Message as _;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Waits for the event `want` among the next events.
async fn wait_for(events: &mut im_client::Events, want: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = next_event(events).await;
        if want(&event) {
            return event;
        }
    }
}

/// Proves that no event came before now: `conn` pushes a presence change, and the next
/// event must be it. The client emits its events in order from one task, so an event for
/// anything earlier would come first.
async fn no_event_before_now(events: &mut Events, conn: &mut Conn, unwanted: &str) {
    let marker = PresenceChanged {
        user_id: 4242,
        online: true,
        ..PresenceChanged::default()
    };
    conn.push(Body::Presence(marker.clone())).await;
    let event = next_event(events).await;
    assert_eq!(event, Event::Presence(marker), "{unwanted}");
}

#[tokio::test]
async fn go_away_is_followed_by_a_resume_on_a_new_connection() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    let go_away = GoAway {
        reason: "shutting down".into(),
        close_after_ms: 1000,
    };
    conn.push(Body::GoAway(go_away)).await;
    let event = wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(
        event,
        Event::Disconnected {
            reason: "the gateway is going away: shutting down".into()
        }
    );
    let mut next = gateway.accept().await;
    let (id, command) = next.recv().await;
    assert!(matches!(command, Command::Resume(ref r) if r.token == "token-1"));
    next.reply(id, Body::Resumed(Resumed::default())).await;
    wait_for(&mut events, |e| *e == Event::Reconnected { resumed: true }).await;
    drop(conn);
}

#[tokio::test]
async fn a_kick_ends_the_session_and_fails_waiting_sends() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    let send = tokio::spawn({
        let client = client.clone();
        async move { client.send(2, "too late").await }
    });
    conn.recv().await;
    let kicked = Kicked {
        reason: "logged out".into(),
    };
    conn.push(Body::Kicked(kicked)).await;
    let err = send.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    let event = wait_for(&mut events, |e| matches!(e, Event::Kicked { .. })).await;
    assert_eq!(
        event,
        Event::Kicked {
            reason: "logged out".into()
        }
    );
    assert_eq!(client.user_id(), None);

    // The gateway closes the connection, as expected (no event); the next call opens the
    // next one, without a session.
    drop(conn);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.state().connected {
        assert!(tokio::time::Instant::now() < deadline, "the close is seen");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    let mut conn = gateway.accept().await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::Ping(_)),
        "no resume: {command:?}"
    );
    conn.reply(id, Body::Pong(Pong::default())).await;
    ping.await.unwrap().unwrap();
    no_event_before_now(&mut events, &mut conn, "the expected close is not reported").await;
}

#[tokio::test]
async fn a_refused_resume_ends_the_session() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    drop(conn);
    let mut conn = gateway.accept().await;
    let (id, _) = conn.recv().await;
    conn.fail(id, Code::Unauthenticated, "session expired")
        .await;
    let event = wait_for(&mut events, |e| matches!(e, Event::Kicked { .. })).await;
    assert_eq!(
        event,
        Event::Kicked {
            reason: "session expired".into()
        }
    );
    assert!(client.state().session.is_none());
    // Without a session a send is the gateway's to refuse.
    let send = tokio::spawn(async move { client.send(2, "x").await });
    let (id, command) = conn.recv().await;
    assert!(matches!(command, Command::Send(_)), "{command:?}");
    conn.fail(id, Code::Unauthenticated, "log in first").await;
    let err = send.await.unwrap().unwrap_err();
    assert_eq!(
        (err.code(), err.to_string().as_str()),
        (Some(Code::Unauthenticated), "log in first")
    );
}

#[tokio::test]
async fn a_send_made_while_disconnected_goes_after_the_resume() {
    let gateway = FakeGateway::start().await;
    let (client, _events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    drop(conn);
    let send = tokio::spawn({
        let client = client.clone();
        async move { client.send(2, "queued").await }
    });
    let mut conn = gateway.accept().await;
    let (id, command) = conn.recv().await;
    assert!(matches!(command, Command::Resume(_)), "{command:?}");
    conn.reply(id, Body::Resumed(Resumed::default())).await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::Send(ref s) if s.body == "queued"),
        "{command:?}"
    );
    let ack = SendAck {
        msg_id: 5,
        seq: 1,
        conversation_id: "d:1:2".into(),
        ..SendAck::default()
    };
    conn.reply(id, Body::Ack(ack)).await;
    assert_eq!(send.await.unwrap().unwrap().msg_id, 5);
}

#[tokio::test]
async fn bad_addresses_and_refused_connections_fail_connect() {
    let err = Client::connect(Options::new("http://h:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Address { .. }), "{err}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = Client::connect(Options::new(address)).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn websocket_carries_the_same_messages_in_binary_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let Some(Ok(WsMessage::Binary(bytes))) = ws.next().await else {
            panic!("a binary frame")
        };
        let request = Request::decode(bytes).unwrap();
        assert!(matches!(request.command, Some(Command::Ping(_))));
        let pong = ServerMessage {
            id: request.id,
            error: None,
            body: Some(Body::Pong(Pong { server_time_ms: 99 })),
        };
        ws.send(WsMessage::Binary(pong.encode_to_vec().into()))
            .await
            .unwrap();
        ws
    });
    let (client, _events) = Client::connect(Options::new(url)).await.unwrap();
    assert_eq!(client.ping().await.unwrap(), 99);
    drop(server.await.unwrap());
}

#[tokio::test]
async fn calls_fail_at_once_while_disconnected() {
    let gateway = FakeGateway::start().await;
    let slow = std::time::Duration::from_secs(2);
    let options = gateway.options().reconnect(slow, slow);
    let (client, mut events) = Client::connect(options).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    drop(conn);
    wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    // The first reconnect waits at least a second: the call does not.
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err}");
    assert!(!client.state().connected);
}

#[tokio::test]
async fn a_logged_out_client_reconnects_only_when_a_call_needs_it() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    wait_for(&mut events, |e| matches!(e, Event::Connected)).await;
    // The gateway closes a connection that does not log in in time: nothing to report,
    // and no new connection until the person does something.
    drop(gateway.accept().await);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.state().connected {
        assert!(tokio::time::Instant::now() < deadline, "the close is seen");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    let mut conn = gateway.accept().await;
    let (id, command) = conn.recv().await;
    assert!(matches!(command, Command::Ping(_)), "{command:?}");
    conn.reply(id, Body::Pong(Pong::default())).await;
    ping.await.unwrap().unwrap();
    no_event_before_now(
        &mut events,
        &mut conn,
        "no event for the expected close, nor for the connection opened on demand",
    )
    .await;
}
