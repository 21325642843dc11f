//! A scripted gateway: a TCP listener speaking the client protocol's frames, driven step by
//! step by the test.

#![allow(dead_code, unreachable_pub)]

pub mod mpim;
pub mod tls;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_client::im_proto::client::request::Command;
use im_client::im_proto::client::server_message::Body;
use im_client::im_proto::client::{Code, Error as WireError, Request, ServerMessage, Session};
use im_client::im_proto::codec::Codec;
use im_client::im_proto::{ChatMessage, Conversation, Conversations};
use im_client::{Client, Event, Events, Options};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// How long a test waits for anything before it fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub struct FakeGateway {
    listener: TcpListener,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeGateway { listener }
    }

    pub fn address(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// Options for a client of this gateway that reconnects quickly.
    pub fn options(&self) -> Options {
        Options::new(self.address()).reconnect(Duration::from_millis(10), Duration::from_millis(50))
    }

    pub async fn accept(&self) -> Conn {
        let (stream, _) = tokio::time::timeout(DEADLINE, self.listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        Conn {
            framed: Framed::new(stream, Codec::default()),
        }
    }
}

pub struct Conn {
    framed: Framed<TcpStream, Codec<Request>>,
}

impl Conn {
    /// The next request (the client's keepalive pings are 30 s apart: none come in a test).
    pub async fn recv(&mut self) -> (u64, Command) {
        let request = tokio::time::timeout(DEADLINE, self.framed.next())
            .await
            .expect("a request comes")
            .expect("the connection is open")
            .unwrap();
        (
            request.id,
            request.command.expect("a request with a command"),
        )
    }

    pub async fn send(&mut self, message: ServerMessage) {
        self.framed.send(&message).await.unwrap();
    }

    pub async fn reply(&mut self, id: u64, body: Body) {
        let message = ServerMessage {
            id,
            error: None,
            body: Some(body),
        };
        self.send(message).await;
    }

    pub async fn fail(&mut self, id: u64, code: Code, text: &str) {
        let error = WireError {
            code: code.into(),
            message: text.into(),
            retryable: false,
        };
        let message = ServerMessage {
            id,
            error: Some(error),
            body: None,
        };
        self.send(message).await;
    }

    pub async fn push(&mut self, body: Body) {
        self.reply(0, body).await;
    }
}

pub fn session(user_id: u64) -> Session {
    Session {
        user_id,
        token: format!("token-{user_id}"),
        ..Session::default()
    }
}

pub fn entry(conversation: &str, seq: u64, sender_id: u64) -> ChatMessage {
    ChatMessage {
        msg_id: 100 + seq,
        conversation_id: conversation.into(),
        seq,
        sender_id,
        body: format!("m{seq}"),
        ..ChatMessage::default()
    }
}

/// Logs `client` in as user 1 through `conn`; the gateway reports `conversations` (id, last
/// seq) for the baseline.
pub async fn login(client: &Client, conn: &mut Conn, conversations: &[(&str, u64)]) {
    let login = {
        let client = client.clone();
        tokio::spawn(async move { client.login("alice", "pw").await })
    };
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::Login(ref l) if l.name == "alice"),
        "{command:?}"
    );
    conn.reply(id, Body::Session(session(1))).await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::ListConversations(_)),
        "{command:?}"
    );
    let conversations = conversations
        .iter()
        .map(|&(id, last_seq)| Conversation {
            conversation_id: id.into(),
            last_seq,
            ..Conversation::default()
        })
        .collect();
    conn.reply(id, Body::Conversations(Conversations { conversations }))
        .await;
    let session = login.await.unwrap().unwrap();
    assert_eq!(session.user_id, 1);
}

/// Registers and logs in alice and bob on their clients and makes them friends; bob's id.
pub async fn alice_befriends_bob(alice: &Client, bob: &Client) -> u64 {
    alice.register("alice", "secret-alice").await.unwrap();
    bob.register("bob", "secret-bob").await.unwrap();
    alice.login("alice", "secret-alice").await.unwrap();
    bob.login("bob", "secret-bob").await.unwrap();
    let bob_id = alice.search_user("bob").await.unwrap().profiles[0].user_id;
    let request = alice.add_friend(bob_id, "hi").await.unwrap();
    bob.respond_friend(request.request_id, true).await.unwrap();
    bob_id
}

/// The next event, or a failure after the deadline.
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("an event comes")
        .expect("the client is alive")
}

/// The next conversation entry event, skipping connection events.
pub async fn next_entry(events: &mut Events) -> Event {
    loop {
        match next_event(events).await {
            Event::Connected | Event::Disconnected { .. } | Event::Reconnected { .. } => {}
            other => return other,
        }
    }
}

/// The seq of a message event.
pub fn seq_of(event: &Event) -> u64 {
    match event {
        Event::Message(m) | Event::Recalled(m) | Event::Edited(m) => m.seq,
        other => panic!("not an entry: {other:?}"),
    }
}
