//! The `mpim` binary as a person runs it: it says where to connect, serves a chat, stops
//! gracefully, and keeps users, tokens and messages across a restart; a bad config stops it
//! at start with one line naming the key.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_proto::client::{
    Login, Request, ServerMessage, Session, request::Command as Cmd, server_message::Body,
};
use im_proto::codec::Codec;
use im_proto::{
    ListFriendRequestsRequest, RegisterRequest, RespondFriendRequestRequest,
    SendFriendRequestRequest, SendRequest, SyncRequest,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

mod support;

use support::{BINARY, Mpim};

struct Client {
    framed: Framed<TcpStream, Codec<ServerMessage>>,
    next_id: u64,
}

impl Client {
    async fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Client {
            framed: Framed::new(stream, Codec::default()),
            next_id: 1,
        }
    }

    /// The reply to `command` (pushes before it are skipped).
    async fn call(&mut self, command: Cmd) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            id,
            command: Some(command),
        };
        self.framed.send(&request).await.unwrap();
        loop {
            let message = self.recv().await.expect("a reply");
            if message.id == id {
                assert!(message.error.is_none(), "{:?}", message.error);
                return message.body.unwrap();
            }
        }
    }

    async fn recv(&mut self) -> Option<ServerMessage> {
        let next = tokio::time::timeout(Duration::from_secs(20), self.framed.next()).await;
        next.expect("a message within 20 s").map(|m| m.unwrap())
    }

    async fn login(&mut self, name: &str) -> Session {
        let login = Login {
            name: name.into(),
            password: "correct horse".into(),
            device_id: "laptop".into(),
            ..Login::default()
        };
        match self.call(Cmd::Login(login)).await {
            Body::Session(session) => session,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpim_serves_a_chat_and_keeps_it_across_a_restart() {
    let data = std::env::temp_dir().join(format!("mpim-process-{}", rand_suffix()));
    let mpim = Mpim::start(&data, "127.0.0.1:0", "127.0.0.1:0");
    let mut ada = Client::connect(&mpim.tcp).await;
    let mut bob = Client::connect(&mpim.tcp).await;
    for (client, name) in [(&mut ada, "ada"), (&mut bob, "bob")] {
        let register = RegisterRequest {
            name: name.into(),
            password: "correct horse".into(),
            nickname: String::new(),
        };
        client.call(Cmd::Register(register)).await;
    }
    let ada_session = ada.login("ada").await;
    let bob_session = bob.login("bob").await;
    let add = SendFriendRequestRequest {
        to_user_id: bob_session.user_id,
        message: "hi".into(),
    };
    ada.call(Cmd::AddFriend(add)).await;
    let Body::FriendRequests(requests) = bob
        .call(Cmd::ListFriendRequests(ListFriendRequestsRequest {
            outgoing: false,
        }))
        .await
    else {
        panic!("friend requests")
    };
    let respond = RespondFriendRequestRequest {
        request_id: requests.requests[0].request_id,
        accept: true,
    };
    bob.call(Cmd::RespondFriend(respond)).await;
    let send = SendRequest {
        to_user_id: bob_session.user_id,
        client_msg_id: "m-1".into(),
        body: "hello, bob".into(),
    };
    let Body::Ack(ack) = ada.call(Cmd::Send(send)).await else {
        panic!("ack")
    };
    let pushed = loop {
        if let Some(Body::Message(message)) = bob.recv().await.unwrap().body {
            break message;
        }
    };
    assert_eq!(
        (pushed.msg_id, pushed.body.as_str()),
        (ack.msg_id, "hello, bob")
    );

    // A graceful stop tells connected clients to go elsewhere.
    let stopping = tokio::task::spawn_blocking(move || mpim.terminate());
    let go_away = loop {
        match bob.recv().await {
            Some(ServerMessage {
                body: Some(Body::GoAway(go_away)),
                ..
            }) => break go_away,
            Some(_) => continue,
            None => panic!("closed without GoAway"),
        }
    };
    assert!(go_away.close_after_ms > 0);
    assert!(stopping.await.unwrap(), "mpim exits 0 on SIGTERM");

    // Restarted on the same data: the token still works and the history is there.
    let mpim = Mpim::start(&data, "127.0.0.1:0", "127.0.0.1:0");
    let mut bob = Client::connect(&mpim.tcp).await;
    let login = Login {
        token: bob_session.token.clone(),
        ..Login::default()
    };
    let Body::Session(again) = bob.call(Cmd::Login(login)).await else {
        panic!("session")
    };
    assert_eq!(again.user_id, bob_session.user_id);
    let sync = SyncRequest {
        conversation_id: ack.conversation_id.clone(),
        after_seq: 0,
        limit: 50,
    };
    let Body::Synced(synced) = bob.call(Cmd::Sync(sync)).await else {
        panic!("synced")
    };
    let bodies: Vec<&str> = synced.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["hello, bob"]);
    assert_eq!(synced.messages[0].sender_id, ada_session.user_id);
    assert!(mpim.terminate());
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn mpim_answers_the_legacy_line_protocol() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    let data = std::env::temp_dir().join(format!("mpim-legacy-{}", rand_suffix()));
    let plain = Mpim::start(&data, "127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(plain.legacy, "off");
    drop(plain);
    let mpim = Mpim::start_with(
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--legacy-listen", "127.0.0.1:0"],
    );
    let stream = TcpStream::connect(&mpim.legacy).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"REGISTER ada correct horse\r\nLOGOUT\nLOGIN ada correct horse\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        line.expect("a reply within 20 s").unwrap().expect("a line")
    };
    assert_eq!(
        next().await,
        "+OK welcome. Commands: REGISTER/LOGIN/SEND/PULL"
    );
    let registered = next().await;
    let uid: u64 = registered
        .strip_prefix("+OK uid=")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(next().await, "+OK logout success");
    assert_eq!(next().await, format!("+OK uid={uid}"));
    drop(mpim);
    std::fs::remove_dir_all(&data).unwrap();
}

fn rand_suffix() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn a_bad_config_stops_it_with_one_line_naming_the_key() {
    for (config, key) in [
        ("[gateway]\nmax_queud = 5\n", "gateway.max_queud"),
        ("[auth]\ndev = \"yes\"\n", "auth.dev"),
        ("[message]\nmax_body_bytes = -1\n", "message.max_body_bytes"),
    ] {
        let stderr = im_common::serve::testing::refused(BINARY, config);
        assert!(stderr.contains(key), "{config:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{config:?}: {stderr}");
    }
}
