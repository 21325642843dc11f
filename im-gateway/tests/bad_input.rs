//! Bad input at the gateway: each bad client gets a clear error or a close, and a normal
//! pair of users in the same test keeps chatting.

mod support;

use std::time::{Duration, Instant};

use im_common::bus::Bus;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Login, Ping, Request, ServerMessage};
use im_proto::{Empty, SendRequest, SyncRequest};
use support::*;

/// Two users who chat; [`Pair::chat`] checks a message gets through quickly.
struct Pair {
    a: Client,
    b: Client,
    sent: u32,
}

impl Pair {
    async fn new(gateway: &Running) -> Pair {
        let mut a = Client::tcp(gateway.tcp).await;
        a.register_login(&name("calm"), "d").await;
        let mut b = Client::ws(gateway.ws, false).await;
        b.register_login(&name("calm"), "d").await;
        Pair { a, b, sent: 0 }
    }

    async fn chat(&mut self) {
        self.sent += 1;
        let started = Instant::now();
        let to = self.b.user_id();
        self.a
            .ok(Command::Send(SendRequest {
                to_user_id: to,
                client_msg_id: format!("calm-{}", self.sent),
                body: format!("still here {}", self.sent),
            }))
            .await;
        let expected = format!("still here {}", self.sent);
        self.b
            .push_where(|b| matches!(b, Body::Message(m) if m.body == expected))
            .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "a message took {took:?}");
    }
}

fn error_of(message: &ServerMessage) -> (Code, &str) {
    let error = message.error.as_ref().expect("an error");
    (Code::try_from(error.code).unwrap(), error.message.as_str())
}

async fn setup(settings: Settings) -> (Cluster, Running, Pair) {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway(&name("gw-bad-"), settings).await;
    let mut pair = Pair::new(&gateway).await;
    pair.chat().await;
    (cluster, gateway, pair)
}

#[tokio::test]
async fn garbage_and_oversized_frames() {
    let (cluster, gateway, mut pair) = setup(settings()).await;

    // Text where a length belongs: "GET " announces over 1 GB.
    let mut http = Client::tcp(gateway.tcp).await;
    http.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let seen = http.closed().await;
    assert_eq!(error_of(&seen[0]).0, Code::ResourceExhausted, "{seen:?}");
    assert!(error_of(&seen[0]).1.contains("over the limit"), "{seen:?}");

    let mut huge = Client::tcp(gateway.tcp).await;
    huge.send_raw(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    let seen = huge.closed().await;
    assert_eq!(error_of(&seen[0]).0, Code::ResourceExhausted);

    // A well-framed frame of garbage: an error, and the connection goes on.
    let mut garbage = Client::tcp(gateway.tcp).await;
    garbage.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    let reply = garbage.next().await.unwrap();
    assert_eq!(error_of(&reply).0, Code::InvalidArgument);
    assert!(matches!(
        garbage.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));

    // Over WebSocket: a binary message over the size limit closes the connection.
    let mut ws = Client::ws(gateway.ws, false).await;
    ws.send_raw(&vec![0u8; im_proto::codec::MAX_FRAME + 1])
        .await;
    ws.closed().await;

    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_request_with_id_0_is_refused() {
    let (cluster, gateway, mut pair) = setup(settings()).await;
    let id_zero = |command| Request {
        id: 0,
        command: Some(command),
    };
    let refused = |reply: &ServerMessage| {
        assert_eq!(reply.id, 0, "{reply:?}");
        assert!(reply.body.is_none(), "{reply:?}");
        let (code, message) = error_of(reply);
        assert_eq!(code, Code::InvalidArgument, "{reply:?}");
        assert!(message.contains("id 0"), "{message}");
    };
    let tcp = Client::tcp(gateway.tcp).await;
    let ws = Client::ws(gateway.ws, false).await;
    let json = Client::ws(gateway.ws, true).await;
    for mut client in [tcp, ws, json] {
        // Before login: a Ping would have been answered with a pong at id 0.
        client.send(&id_zero(Command::Ping(Ping {}))).await;
        refused(&client.next().await.unwrap());
        client.register_login(&name("zero"), "d").await;
        // After login: the send is not carried out.
        let to = pair.b.user_id();
        let send = Command::Send(SendRequest {
            to_user_id: to,
            client_msg_id: "zero".to_owned(),
            body: "sent with id 0".to_owned(),
        });
        client.send(&id_zero(send)).await;
        refused(&client.next().await.unwrap());
        let Body::Conversations(list) = client.ok(Command::ListConversations(Empty {})).await
        else {
            panic!("conversations")
        };
        assert!(list.conversations.is_empty(), "{list:?}");
        // The connection goes on.
        assert!(matches!(
            client.ok(Command::Ping(Ping {})).await,
            Body::Pong(_)
        ));
    }
    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn invalid_json_unknown_commands_and_commands_before_login() {
    let (cluster, gateway, mut pair) = setup(settings()).await;

    let mut json = Client::ws(gateway.ws, true).await;
    json.send_text("{this is not json").await;
    let reply = json.next().await.unwrap();
    assert_eq!(error_of(&reply).0, Code::InvalidArgument);
    json.send_text(r#"{"id":"4","no_such_command":{}}"#).await;
    let reply = json.next().await.unwrap();
    assert_eq!(reply.id, 0);
    assert_eq!(error_of(&reply).0, Code::InvalidArgument, "{reply:?}");
    json.send_text(r#"{"id":"5"}"#).await;
    let reply = json.next().await.unwrap();
    assert_eq!(
        (reply.id, error_of(&reply)),
        (5, (Code::Unimplemented, "unknown command"))
    );

    // A protobuf command of a field number this gateway does not know.
    let mut tcp = Client::tcp(gateway.tcp).await;
    let mut unknown = vec![0x08, 0x09]; // id = 9
    unknown.extend([0xfa, 0x06, 0x00]); // field 111, empty
    let mut frame = u32::try_from(unknown.len()).unwrap().to_be_bytes().to_vec();
    frame.extend(unknown);
    tcp.send_raw(&frame).await;
    let reply = tcp.next().await.unwrap();
    assert_eq!((reply.id, error_of(&reply).0), (9, Code::Unimplemented));

    let reply = tcp
        .call(Command::Sync(SyncRequest {
            conversation_id: "d:1:2".to_owned(),
            ..SyncRequest::default()
        }))
        .await;
    assert_eq!(error_of(&reply), (Code::Unauthenticated, "log in first"));
    tcp.send(&Request {
        id: 11,
        command: None,
    })
    .await;
    assert_eq!(error_of(&tcp.next().await.unwrap()).0, Code::Unimplemented);

    // A second login on a logged-in connection, and a wrong password.
    let session = tcp.register_login(&name("twice"), "d").await;
    let reply = tcp
        .call(Command::Login(Login {
            token: session.token,
            ..Login::default()
        }))
        .await;
    assert_eq!(error_of(&reply).0, Code::FailedPrecondition);
    let mut wrong = Client::tcp(gateway.tcp).await;
    let reply = wrong
        .call(Command::Login(Login {
            name: session.profile.unwrap().name,
            password: "not the password".to_owned(),
            ..Login::default()
        }))
        .await;
    assert_eq!(error_of(&reply).0, Code::Unauthenticated, "{reply:?}");

    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_flood_is_limited_then_closed() {
    let limited = Settings {
        rate_per_sec: 5,
        rate_burst: 10,
        max_rate_limited: 50,
        ..settings()
    };
    let (cluster, gateway, mut pair) = setup(limited).await;
    let mut flood = Client::tcp(gateway.tcp).await;
    for id in 1..=300 {
        flood
            .send(&Request {
                id,
                command: Some(Command::Ping(Ping {})),
            })
            .await;
    }
    let seen = flood.closed().await;
    let pongs = seen.iter().filter(|m| m.error.is_none()).count();
    let limited: Vec<_> = seen.iter().filter(|m| m.error.is_some()).collect();
    // The burst, and what the rate refills while the flood is read (well under a second).
    assert!((10..20).contains(&pongs), "{pongs} pongs");
    assert!(limited.len() > 50, "{} refused", limited.len());
    let (code, message) = error_of(limited[0]);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.starts_with("rate limit"), "{message}");
    assert!(limited[0].error.as_ref().unwrap().retryable);

    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_flood_of_undecodable_frames_is_limited_then_closed() {
    let limited = Settings {
        rate_per_sec: 5,
        rate_burst: 10,
        max_rate_limited: 20,
        ..settings()
    };
    let (cluster, gateway, mut pair) = setup(limited).await;
    for form in ["frames", "JSON over WebSocket"] {
        let mut flood = if form == "frames" {
            Client::tcp(gateway.tcp).await
        } else {
            Client::ws(gateway.ws, true).await
        };
        // One frame, then its answer, until the gateway closes: nothing is left unread
        // when it does.
        let mut codes = Vec::new();
        for _ in 0..200 {
            if form == "frames" {
                flood.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
            } else if !flood.try_send_text("{not json").await {
                break;
            }
            match flood.next().await {
                Some(reply) => codes.push(error_of(&reply).0),
                None => break,
            }
        }
        // The burst (and what the rate refills meanwhile) is answered as bad input; the rest
        // as over the limit, until the connection is closed well before the 200th frame.
        let bad = codes
            .iter()
            .filter(|c| **c == Code::InvalidArgument)
            .count();
        let refused = codes
            .iter()
            .filter(|c| **c == Code::ResourceExhausted)
            .count();
        assert!((10..20).contains(&bad), "{form}: {bad} answered: {codes:?}");
        assert_eq!(refused, 21, "{form}: {codes:?}");
        assert_eq!(bad + refused, codes.len(), "{form}: {codes:?}");
    }
    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected() {
    let small_queue = Settings {
        max_queued: 8,
        ..settings()
    };
    let (cluster, gateway, mut pair) = setup(small_queue).await;
    let mut sink = Client::tcp(gateway.tcp).await;
    sink.register_login(&name("sink"), "d").await;
    let mut sender = Client::tcp(gateway.tcp).await;
    sender.register_login(&name("sender"), "d").await;
    // Enough bytes to fill the socket buffers on both sides of loopback, then the queue.
    let body = "x".repeat(60_000);
    let mut sent = 0;
    let sink_id = sink.user_id();
    let mut held = 0;
    let closed = loop {
        let reply = sender
            .call(Command::Send(SendRequest {
                to_user_id: sink_id,
                client_msg_id: format!("s{sent}"),
                body: body.clone(),
            }))
            .await;
        assert!(reply.error.is_none(), "{reply:?}");
        sent += 1;
        held = held.max(unacknowledged(&cluster.bus, &gateway.id).await);
        if sent % 20 == 0 {
            pair.chat().await;
            let routes = cluster.bus.routes.query(vec![sink_id]).await.unwrap();
            if routes.is_empty() {
                break true;
            }
        }
        if sent > 2000 {
            break false;
        }
    };
    assert!(
        closed,
        "the slow reader is still connected after {sent} messages"
    );
    sink.closed().await;
    // Entries stay unacknowledged while their pushes wait for the socket, and are
    // acknowledged once the connection is gone.
    assert!(
        held > 0,
        "entries were acknowledged before they were written"
    );
    let deadline = Instant::now() + WAIT;
    while unacknowledged(&cluster.bus, &gateway.id).await > 0 {
        assert!(Instant::now() < deadline, "entries stay unacknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn connections_that_never_authenticate_are_closed() {
    let impatient = Settings {
        auth_timeout_ms: 500,
        ..settings()
    };
    let (cluster, gateway, mut pair) = setup(impatient).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(Client::tcp(gateway.tcp).await);
    }
    // A ping does not count as authenticating.
    idle[0].ok(Command::Ping(Ping {})).await;
    pair.chat().await;
    for client in &mut idle {
        let seen = client.closed().await;
        assert_eq!(
            error_of(&seen[0]),
            (
                Code::Unauthenticated,
                "log in first: authentication timed out"
            )
        );
    }
    pair.chat().await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn websocket_frames_far_larger_than_the_read_buffer_arrive_whole() {
    let (cluster, gateway, _pair) = setup(settings()).await;
    let mut receiver = Client::tcp(gateway.tcp).await;
    receiver.register_login(&name("big-in"), "d").await;
    let to = receiver.user_id();
    // 60,000 bytes of text, under the 64 KiB body limit: over a hundred of the connection's
    // 512-byte reads for one binary or text frame.
    let body: String = (0..60_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for json in [false, true] {
        let mut sender = Client::ws(gateway.ws, json).await;
        sender.register_login(&name("big-out"), "d").await;
        let id = format!("big-{json}");
        sender
            .ok(Command::Send(SendRequest {
                to_user_id: to,
                client_msg_id: id.clone(),
                body: body.clone(),
            }))
            .await;
        let got = receiver
            .push_where(|b| matches!(b, Body::Message(m) if m.client_msg_id == id))
            .await;
        let Body::Message(message) = got else {
            unreachable!("push_where returns a message");
        };
        assert_eq!(message.body, body, "json={json}");
    }
    cluster.close().await;
}
