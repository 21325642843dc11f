//! The legacy line protocol: the original system's commands, one per line, on the same
//! services as the client protocol (docs/legacy-protocol.md).

mod support;

use std::net::SocketAddr;

use im_common::bus::Bus;
use im_common::ids::ConversationId;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::{Empty, SendRequest, SyncRequest};
use support::term::{PASSWORD, Term, field, uid_of};
use support::*;

async fn start(friends_only: bool) -> (Cluster, Running, SocketAddr) {
    let cluster = Cluster::start(Bus::in_process(), friends_only).await;
    let gateway = cluster
        .gateway_with_legacy(&name("gw-"), settings(), 64 * 1024)
        .await;
    let addr = gateway.legacy.unwrap();
    (cluster, gateway, addr)
}

/// The value of a `key=<value>` reply detail.
fn value(detail: &str, key: &str) -> String {
    detail
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix('='))
        .unwrap_or_else(|| panic!("not {key}=<value>: {detail}"))
        .to_owned()
}

/// Friends the legacy way: each asks the other.
async fn befriend(a: &mut Term, b: &mut Term) {
    assert_eq!(
        a.ok(&format!("ADDFRIEND {}", b.uid)).await,
        "friend request sent"
    );
    assert_eq!(b.ok(&format!("ADDFRIEND {}", a.uid)).await, "friend added");
}

#[tokio::test]
async fn friends_chats_and_groups() {
    let (cluster, _gateway, addr) = start(true).await;
    let mut ada = Term::user(addr, &name("ada")).await;
    let mut bob = Term::user(addr, &name("bob")).await;
    let mut cy = Term::user(addr, &name("cy")).await;

    // A request, then friends once Bob asks back.
    assert_eq!(
        ada.ok(&format!("ADDFRIEND {}", bob.uid)).await,
        "friend request sent"
    );
    assert_eq!(ada.ok("GETFRIENDS").await, "friends: ");
    assert_eq!(
        bob.ok(&format!("addfriend {}", ada.uid)).await,
        "friend added"
    );
    assert_eq!(
        ada.ok(&format!("ADDFRIEND {}", bob.uid)).await,
        "friend added"
    );
    assert_eq!(ada.ok("GETFRIENDS").await, format!("friends: {}", bob.uid));
    assert_eq!(bob.ok("GETFRIENDS").await, format!("friends: {}", ada.uid));
    assert_eq!(cy.ok("GETFRIENDS").await, "friends: ");

    let id = value(
        &ada.ok(&format!("SEND {} hello  bob \\o/", bob.uid)).await,
        "msg_id",
    );
    let push = bob.push().await;
    assert_eq!(field(&push, "id"), id);
    assert_eq!(field(&push, "from"), ada.uid.to_string());
    assert!(field(&push, "ts").parse::<i64>().unwrap() > 0);
    assert_eq!(field(&push, "text"), "hello  bob \\\\o/");
    bob.ok(&format!("SEND {} hi ada", ada.uid)).await;
    // Ada's next line is Bob's message: her own never came back.
    assert_eq!(field(&ada.push().await, "text"), "hi ada");
    // Cy is no friend of Ada's.
    let why = cy.err(&format!("SEND {} hello", ada.uid)).await;
    assert!(why.contains("friend"), "{why}");

    let gid = value(&ada.ok("CREATEGROUP crabs the crab club").await, "group_id");
    assert_eq!(bob.ok(&format!("JOINGROUP {gid}")).await, "joined group");
    assert_eq!(cy.ok(&format!("JoinGroup {gid}")).await, "joined group");
    let id = value(
        &ada.ok(&format!("SENDGROUP {gid} hi all")).await,
        "group_msg_id",
    );
    for member in [&mut bob, &mut cy] {
        let push = member.push().await;
        assert_eq!(
            push,
            format!(
                "{} group={gid} text=hi all",
                &push[..push.find(" group=").unwrap()]
            )
        );
        assert_eq!(field(&push, "id"), id);
        assert_eq!(field(&push, "from"), ada.uid.to_string());
    }
    cy.ok(&format!("SENDGROUP {gid} hello crabs")).await;
    assert_eq!(field(&ada.push().await, "text"), "hello crabs");
    assert_eq!(field(&bob.push().await, "text"), "hello crabs");
    // What was pushed counts as seen.
    for term in [&mut ada, &mut bob, &mut cy] {
        assert_eq!(term.pull().await, (Vec::new(), false));
    }
    cluster.close().await;
}

#[tokio::test]
async fn offline_messages_are_pulled_once_in_order_and_kept() {
    let (cluster, gateway, addr) = start(true).await;
    let (ada_name, bob_name) = (name("ada"), name("bob"));
    let mut ada = Term::user(addr, &ada_name).await;
    let mut bob = Term::user(addr, &bob_name).await;
    befriend(&mut ada, &mut bob).await;
    let gid = value(&ada.ok("CREATEGROUP club").await, "group_id");
    bob.ok(&format!("JOINGROUP {gid}")).await;
    // LOGOUT keeps the connection, logged out: nothing is pushed to it, and commands wait
    // for a login.
    assert_eq!(bob.ok("LOGOUT").await, "logout success");
    assert_eq!(bob.err("PULL").await, "not login");

    let mut sent = Vec::new();
    for text in ["one", "two"] {
        sent.push(value(
            &ada.ok(&format!("SEND {} {text}", bob.uid)).await,
            "msg_id",
        ));
    }
    let id = ada.ok(&format!("SENDGROUP {gid} in the club")).await;
    sent.push(value(&id, "group_msg_id"));
    sent.push(value(
        &ada.ok(&format!("SEND {} three", bob.uid)).await,
        "msg_id",
    ));

    // The same connection logs in again, as the original client does after LOGOUT. The
    // first line it reads is LOGIN's reply: nothing was pushed while it was logged out.
    bob.send(&format!("LOGIN {bob_name} {PASSWORD}")).await;
    let uid = bob.line().await.unwrap();
    assert_eq!(uid, format!("+OK uid={}", bob.uid));
    // A message pushed before the PULL is not shown again by it.
    ada.ok(&format!("SEND {} four", bob.uid)).await;
    assert_eq!(field(&bob.push().await, "text"), "four");
    let (messages, more) = bob.pull().await;
    assert!(!more);
    let ids: Vec<&str> = messages.iter().map(|m| field(m, "id")).collect();
    assert_eq!(ids, sent);
    let texts: Vec<&str> = messages.iter().map(|m| field(m, "text")).collect();
    assert_eq!(texts, ["one", "two", "in the club", "three"]);
    assert_eq!(field(&messages[2], "group"), gid);
    assert_eq!(bob.pull().await, (Vec::new(), false));

    // Nothing was deleted: a client-protocol login of Bob syncs the whole conversation.
    let mut tcp = Client::tcp(gateway.tcp).await;
    let session = tcp.login(&bob_name, "phone").await;
    assert_eq!(session.user_id, bob.uid);
    let conversation = ConversationId::direct(ada.uid, bob.uid).to_string();
    let Body::Synced(synced) = tcp
        .ok(Command::Sync(SyncRequest {
            conversation_id: conversation,
            after_seq: 0,
            limit: 0,
        }))
        .await
    else {
        panic!("synced")
    };
    let bodies: Vec<&str> = synced.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["one", "two", "three", "four"]);

    // A last line without a newline, and the client closes its side (`printf … | nc -N`):
    // it is carried out and answered, then the connection closes.
    ada.send_raw(format!("SEND {} last words", bob.uid).as_bytes())
        .await;
    ada.finish().await;
    assert!(ada.reply().await.starts_with("+OK "));
    assert_eq!(ada.line().await, None);
    assert_eq!(field(&bob.push().await, "text"), "last words");
    cluster.close().await;
}

#[tokio::test]
async fn legacy_and_client_protocol_users_talk() {
    let (cluster, gateway, addr) = start(true).await;
    let mut ada = Client::tcp(gateway.tcp).await;
    ada.register_login(&name("ada"), "laptop").await;
    let mut bob = Term::user(addr, &name("bob")).await;
    // Bob asks, Ada accepts on her client: friends on both protocols.
    bob.ok(&format!("ADDFRIEND {}", ada.user_id())).await;
    let Body::FriendRequested(request) = ada
        .push_where(|b| matches!(b, Body::FriendRequested(_)))
        .await
    else {
        unreachable!()
    };
    ada.ok(Command::RespondFriend(
        im_proto::RespondFriendRequestRequest {
            request_id: request.request_id,
            accept: true,
        },
    ))
    .await;
    assert_eq!(
        bob.ok("GETFRIENDS").await,
        format!("friends: {}", ada.user_id())
    );
    let Body::Profiles(friends) = ada.ok(Command::ListFriends(Empty {})).await else {
        panic!("profiles")
    };
    assert_eq!(friends.profiles[0].user_id, bob.uid);

    let Body::Ack(ack) = ada
        .ok(Command::Send(SendRequest {
            to_user_id: bob.uid,
            client_msg_id: "m1".to_owned(),
            body: "two\nlines".to_owned(),
        }))
        .await
    else {
        panic!("an ack")
    };
    let push = bob.push().await;
    assert_eq!(field(&push, "id"), ack.msg_id.to_string());
    assert_eq!(field(&push, "text"), "two\\nlines");

    // A second legacy login of Bob: both connections get pushes, and the first keeps
    // them after the second logs out.
    let mut bob2 = Term::connect(addr).await;
    bob2.login(&bob.name).await;
    for (i, body) in ["to both", "to the first"].into_iter().enumerate() {
        ada.ok(Command::Send(SendRequest {
            to_user_id: bob.uid,
            client_msg_id: format!("b{i}"),
            body: body.to_owned(),
        }))
        .await;
        assert_eq!(field(&bob.push().await, "text"), body);
        if i == 0 {
            assert_eq!(field(&bob2.push().await, "text"), body);
            bob2.ok("LOGOUT").await;
        }
    }

    let id = value(
        &bob.ok(&format!("SEND {} back at you", ada.user_id())).await,
        "msg_id",
    );
    let Body::Message(message) = ada.push_where(|b| matches!(b, Body::Message(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (message.msg_id.to_string(), message.body.as_str()),
        (id, "back at you")
    );
    assert_eq!(message.sender_id, bob.uid);
    cluster.close().await;
}

#[tokio::test]
async fn bad_lines_get_errors_and_the_connection_goes_on() {
    let (cluster, _gateway, addr) = start(true).await;
    let mut term = Term::connect(addr).await;
    assert_eq!(term.err("PULL").await, "not login");
    assert_eq!(term.err("SEND 1 hi").await, "not login");
    assert!(
        term.err("FROB 1 2")
            .await
            .starts_with("unknown command \"FROB\"")
    );
    assert_eq!(
        term.err("LOGIN nobody").await,
        "usage: LOGIN <name> <password>"
    );
    let why = term.err(&format!("LOGIN {} wrong", name("nobody"))).await;
    assert!(!why.is_empty(), "{why}");

    let ada = name("ada");
    let uid = uid_of(&term.ok(&format!("REGISTER {ada} {PASSWORD}")).await);
    // REGISTER logged the connection in: another login needs a LOGOUT first.
    assert_eq!(
        term.err(&format!("LOGIN {ada} {PASSWORD}")).await,
        format!("already logged in as uid={uid}; LOGOUT first")
    );
    assert_eq!(
        term.err("SEND abc hi").await,
        "bad uid \"abc\": not a number"
    );
    assert!(
        term.err("SEND 5")
            .await
            .starts_with("usage: SEND <uid> <text>")
    );
    assert_eq!(term.err("JOINGROUP").await, "usage: JOINGROUP <gid>");
    // Not a friend, no such user: the services' own words, nothing of the inside.
    let why = term.err("SEND 999999 hi").await;
    assert!(!why.contains("SELECT") && !why.is_empty(), "{why}");
    term.send_raw(b"SEND 1 \xff\xfe\r\n").await;
    assert!(term.reply().await.starts_with("-ERR invalid UTF-8"));
    // Empty lines are skipped: the next reply is PING's.
    term.send_raw(b"\n\r\n  \n").await;
    assert_eq!(term.ok("PING").await, "PONG");

    // A 1 MiB line: an error, its rest ignored, and the connection goes on.
    let mut long = vec![b'x'; 1 << 20];
    long.push(b'\n');
    term.send_raw(&long).await;
    assert_eq!(
        term.reply().await,
        "-ERR line too long (max 65536 bytes); the rest of it is ignored"
    );
    assert_eq!(term.ok("PING").await, "PONG");

    // Others were served all along.
    let mut other = Term::user(addr, &name("bob")).await;
    assert_eq!(other.ok("GETFRIENDS").await, "friends: ");

    assert_eq!(term.ok("LOGOUT").await, "logout success");
    assert_eq!(term.err("LOGOUT").await, "not login");
    cluster.close().await;
}

#[tokio::test]
async fn shutdown_says_so_and_closes() {
    let (cluster, mut gateway, addr) = start(true).await;
    let mut term = Term::user(addr, &name("ada")).await;
    gateway.shutdown();
    let lines = term.closed().await;
    assert_eq!(lines, ["-ERR shutting down; reconnect later"]);
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let settings = Settings {
        idle_timeout_ms: 200,
        ..settings()
    };
    let gateway = cluster
        .gateway_with_legacy(&name("gw-"), settings, 1024)
        .await;
    let mut term = Term::connect(gateway.legacy.unwrap()).await;
    assert_eq!(term.ok("PING").await, "PONG");
    assert_eq!(term.closed().await, ["-ERR idle: no line within 200 ms"]);
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_is_pulled_in_parts() {
    use im_common::identity::{User, for_user};

    let (cluster, _gateway, addr) = start(true).await;
    let mut ada = Term::user(addr, &name("ada")).await;
    let mut bob = Term::user(addr, &name("bob")).await;
    befriend(&mut ada, &mut bob).await;
    bob.ok("LOGOUT").await;
    // Straight to the service: faster than lines under the rate limit.
    let options = for_user(mprpc::CallOptions::default(), &User::new(ada.uid));
    for chunk in 0..21 {
        let sends = (0..50).map(|i| {
            let request = SendRequest {
                to_user_id: bob.uid,
                client_msg_id: format!("m-{chunk}-{i}"),
                body: format!("message {chunk}-{i}"),
            };
            let (message, options) = (&cluster.services.message, &options);
            async move { message.send_with(&request, options).await.unwrap() }
        });
        futures::future::join_all(sends).await;
    }

    let bob_name = bob.name.clone();
    let mut bob = Term::connect(addr).await;
    bob.login(&bob_name).await;
    let (first, more) = bob.pull().await;
    assert_eq!((first.len(), more), (1000, true));
    let (rest, more) = bob.pull().await;
    assert_eq!((rest.len(), more), (50, false));
    let mut ids: Vec<&str> = first.iter().chain(&rest).map(|m| field(m, "id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1050);
    assert_eq!(bob.pull().await, (Vec::new(), false));
    cluster.close().await;
}

#[tokio::test]
async fn add_friend_never_accepts_for_the_target() {
    let (cluster, gateway, addr) = start(true).await;
    let mut tcp = Vec::new();
    for who in ["ada", "dan", "eve"] {
        let mut client = Client::tcp(gateway.tcp).await;
        client.register_login(&name(who), "phone").await;
        tcp.push(client);
    }
    let [ada_tcp, dan, eve] = &mut tcp[..] else {
        unreachable!()
    };
    let friends_of = async |client: &mut Client| {
        let Body::Profiles(friends) = client.ok(Command::ListFriends(Empty {})).await else {
            panic!("profiles")
        };
        friends
            .profiles
            .iter()
            .map(|p| p.user_id)
            .collect::<Vec<_>>()
    };
    let add = |to: u64| {
        Command::AddFriend(im_proto::SendFriendRequestRequest {
            to_user_id: to,
            message: String::new(),
        })
    };
    let ada_name = ada_tcp
        .session
        .as_ref()
        .unwrap()
        .profile
        .as_ref()
        .unwrap()
        .name
        .clone();
    let mut ada = Term::connect(addr).await;
    ada.login(&ada_name).await;

    // A stranger's ADDFRIEND is a request: with friends_only on, Dan is still out of reach,
    // also after asking twice.
    let mut stranger = Term::user(addr, &name("mal")).await;
    for _ in 0..2 {
        let reply = stranger.cmd(&format!("ADDFRIEND {}", dan.user_id())).await;
        assert_eq!(reply, "+OK friend request sent");
    }
    let why = stranger.err(&format!("SEND {} hi", dan.user_id())).await;
    assert!(why.contains("friend"), "{why}");
    assert!(friends_of(dan).await.is_empty());

    // Dan asks back (client protocol): now they are friends, and the stranger may write.
    dan.ok(add(stranger.uid)).await;
    assert_eq!(friends_of(dan).await, [stranger.uid]);
    stranger.ok(&format!("SEND {} hi dan", dan.user_id())).await;

    // Ada had asked Dan already: asking again is still only a request. Dan accepts on his
    // client.
    ada_tcp.ok(add(dan.user_id())).await;
    assert_eq!(
        ada.ok(&format!("ADDFRIEND {}", dan.user_id())).await,
        "friend request sent"
    );
    assert_eq!(friends_of(dan).await, [stranger.uid]);
    let Body::FriendRequests(requests) = dan
        .ok(Command::ListFriendRequests(
            im_proto::ListFriendRequestsRequest { outgoing: false },
        ))
        .await
    else {
        panic!("requests")
    };
    let from_ada = requests
        .requests
        .iter()
        .find(|r| r.from_user_id == ada_tcp.user_id())
        .unwrap();
    dan.ok(Command::RespondFriend(
        im_proto::RespondFriendRequestRequest {
            request_id: from_ada.request_id,
            accept: true,
        },
    ))
    .await;
    let mut dans = friends_of(dan).await;
    dans.sort_unstable();
    let mut expected = vec![stranger.uid, ada_tcp.user_id()];
    expected.sort_unstable();
    assert_eq!(dans, expected);
    // Friends already: ADDFRIEND says so.
    assert_eq!(
        ada.ok(&format!("ADDFRIEND {}", dan.user_id())).await,
        "friend added"
    );

    // Eve had asked Ada: Ada's ADDFRIEND answers it.
    eve.ok(add(ada_tcp.user_id())).await;
    assert_eq!(
        ada.ok(&format!("ADDFRIEND {}", eve.user_id())).await,
        "friend added"
    );
    assert_eq!(friends_of(eve).await, [ada_tcp.user_id()]);

    dan.ok(Command::Block(im_proto::UserId {
        user_id: ada_tcp.user_id(),
    }))
    .await;
    let why = ada.err(&format!("ADDFRIEND {}", dan.user_id())).await;
    assert!(why.contains("blocked"), "{why}");
    assert!(
        !ada.err(&format!("ADDFRIEND {}", ada_tcp.user_id()))
            .await
            .is_empty()
    );
    cluster.close().await;
}

/// A terminal on a gateway that allows 1 line per second, 2 at once, and closes after the
/// second refusal in a row.
async fn rate_limited() -> (Cluster, Running, Term) {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let settings = Settings {
        rate_per_sec: 1,
        rate_burst: 2,
        max_rate_limited: 1,
        ..settings()
    };
    let gateway = cluster
        .gateway_with_legacy(&name("gw-"), settings, 1024)
        .await;
    let term = Term::connect(gateway.legacy.unwrap()).await;
    (cluster, gateway, term)
}

#[tokio::test]
async fn lines_are_rate_limited() {
    let (cluster, _gateway, mut term) = rate_limited().await;
    term.send("PING\nPING\nPING\nPING").await;
    assert_eq!(
        term.closed().await,
        [
            "+OK PONG",
            "+OK PONG",
            "-ERR rate limit: at most 1 lines per second; slow down",
            "-ERR rate limit: at most 1 lines per second; slow down",
        ]
    );
    cluster.close().await;
}

/// The original terminal client, as it reads the gateway: line by line, each line
/// recognised by its prefix (or, for the end of a PULL, compared whole).
mod original {
    use std::net::SocketAddr;

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::support::WAIT;

    /// What the original client makes of a line.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Seen {
        Welcome,
        /// `+OK uid=`: the client counts itself logged in as this uid.
        LoggedIn(u64),
        /// `+OK msg_id=`: shown as sent.
        Sent,
        /// A `MSG` line: sender and text, as its tokenizer reads them.
        Message {
            from: u64,
            text: String,
        },
        PullDone,
        Error,
        /// Any other line, shown as it is.
        Shown,
    }

    pub(super) struct Client {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Client {
        pub(super) async fn connect(addr: SocketAddr) -> Client {
            let (read, writer) = TcpStream::connect(addr).await.unwrap().into_split();
            Client {
                reader: BufReader::new(read),
                writer,
            }
        }

        pub(super) async fn send(&mut self, line: &str) {
            self.writer
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
        }

        /// The next line, with its newline, exactly as it came.
        pub(super) async fn raw(&mut self) -> String {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("a line in time")
                .unwrap();
            assert!(read > 0, "the connection stays open");
            line
        }

        /// Sends `line`; the reply, byte for byte.
        pub(super) async fn exchange(&mut self, line: &str) -> String {
            self.send(line).await;
            self.raw().await
        }
    }

    /// The original client's reading of `line` (without its newline).
    pub(super) fn seen(line: &str) -> Seen {
        if line.starts_with("+OK welcome") {
            Seen::Welcome
        } else if let Some(uid) = line.strip_prefix("+OK uid=") {
            Seen::LoggedIn(uid.parse().unwrap_or(0))
        } else if line.starts_with("+OK msg_id=") {
            Seen::Sent
        } else if let Some(rest) = line.strip_prefix("MSG ") {
            let mut tokens = rest.split_whitespace();
            let (mut from, mut text) = (0, String::new());
            while let Some(token) = tokens.next() {
                if let Some(value) = token.strip_prefix("from=") {
                    from = value.parse().unwrap();
                } else if let Some(value) = token.strip_prefix("text=") {
                    text = std::iter::once(value)
                        .chain(tokens.by_ref())
                        .collect::<Vec<_>>()
                        .join(" ");
                }
            }
            Seen::Message { from, text }
        } else if line == "+OK pull_done" {
            Seen::PullDone
        } else if line.starts_with("-ERR") {
            Seen::Error
        } else {
            Seen::Shown
        }
    }
}

#[tokio::test]
async fn the_original_terminal_client_reads_every_reply_as_it_did() {
    use original::{Client, Seen, seen};

    let (cluster, _gateway, addr) = start(true).await;
    let (ada_name, bob_name) = (name("ada"), name("bob"));

    let mut ada = Client::connect(addr).await;
    let welcome = ada.raw().await;
    assert_eq!(welcome, "+OK welcome. Commands: REGISTER/LOGIN/SEND/PULL\n");
    assert_eq!(seen(welcome.trim_end()), Seen::Welcome);
    // Every command that needs a login says so in the original's words.
    for line in [
        "SEND 1 hi",
        "SENDGROUP 1 hi",
        "PULL",
        "LOGOUT",
        "ADDFRIEND 1",
        "GETFRIENDS",
        "CREATEGROUP club",
        "JOINGROUP 1",
    ] {
        assert_eq!(ada.exchange(line).await, "-ERR not login\n", "{line}");
    }
    let reply = ada
        .exchange(&format!("REGISTER {ada_name} {PASSWORD}"))
        .await;
    let Seen::LoggedIn(ada_uid) = seen(reply.trim_end()) else {
        panic!("{reply}")
    };
    assert_eq!(reply, format!("+OK uid={ada_uid}\n"));

    let mut bob = Client::connect(addr).await;
    bob.raw().await;
    let reply = bob
        .exchange(&format!("REGISTER {bob_name} {PASSWORD}"))
        .await;
    let Seen::LoggedIn(bob_uid) = seen(reply.trim_end()) else {
        panic!("{reply}")
    };

    // Friends: a request first (its own +OK line), then both have asked.
    assert_eq!(
        ada.exchange(&format!("ADDFRIEND {bob_uid}")).await,
        "+OK friend request sent\n"
    );
    assert_eq!(
        bob.exchange(&format!("ADDFRIEND {ada_uid}")).await,
        "+OK friend added\n"
    );
    assert_eq!(
        ada.exchange("GETFRIENDS").await,
        format!("+OK friends: {bob_uid}\n")
    );

    // A message: the sender's ack, the receiver's line.
    let reply = ada.exchange(&format!("SEND {bob_uid} hello  there")).await;
    assert_eq!(seen(reply.trim_end()), Seen::Sent);
    let msg_id: u64 = reply["+OK msg_id=".len()..].trim_end().parse().unwrap();
    let push = bob.raw().await;
    assert!(
        push.starts_with(&format!("MSG id={msg_id} from={ada_uid} ts=")),
        "{push}"
    );
    assert!(push.ends_with(" text=hello  there\n"), "{push}");
    assert_eq!(
        seen(push.trim_end()),
        Seen::Message {
            from: ada_uid,
            text: "hello there".to_owned()
        }
    );

    // Groups.
    let reply = ada.exchange("CREATEGROUP club the club").await;
    let gid: u64 = reply
        .strip_prefix("+OK group_id=")
        .and_then(|gid| gid.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(reply, format!("+OK group_id={gid}\n"));
    assert_eq!(
        bob.exchange(&format!("JOINGROUP {gid}")).await,
        "+OK joined group\n"
    );
    let reply = ada.exchange(&format!("SENDGROUP {gid} to the club")).await;
    let group_msg_id: u64 = reply
        .strip_prefix("+OK group_msg_id=")
        .and_then(|id| id.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{reply}"));
    let push = bob.raw().await;
    assert!(
        push.starts_with(&format!("MSG id={group_msg_id} from={ada_uid} ts=")),
        "{push}"
    );

    // LOGOUT keeps the connection; LOGIN on it again, and PULL what came meanwhile.
    assert_eq!(bob.exchange("LOGOUT").await, "+OK logout success\n");
    let reply = ada
        .exchange(&format!("SEND {bob_uid} while you were out"))
        .await;
    assert_eq!(seen(reply.trim_end()), Seen::Sent);
    assert_eq!(
        bob.exchange(&format!("LOGIN {bob_name} {PASSWORD}")).await,
        format!("+OK uid={bob_uid}\n")
    );
    bob.send("PULL").await;
    let line = bob.raw().await;
    assert_eq!(
        seen(line.trim_end()),
        Seen::Message {
            from: ada_uid,
            text: "while you were out".to_owned()
        }
    );
    assert_eq!(bob.raw().await, "+OK pull_done\n");
    assert_eq!(bob.exchange("PULL").await, "+OK pull_done\n");
    cluster.close().await;
}

#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let settings = Settings {
        rate_per_sec: 100_000,
        rate_burst: 100_000,
        ..settings()
    };
    let config = im_gateway::LegacyConfig {
        login_timeout_ms: 300,
        ..im_gateway::LegacyConfig::default()
    };
    let gateway = cluster
        .gateway_with_legacy_config(&name("gw-"), settings, config)
        .await;
    let addr = gateway.legacy.unwrap();

    // Lines do not keep a connection without a login open.
    let mut term = Term::connect(addr).await;
    let mut lines = Vec::new();
    loop {
        term.send("PING").await;
        match term.line().await {
            Some(line) if line == "+OK PONG" => {}
            Some(line) => {
                lines.push(line);
                break;
            }
            None => break,
        }
    }
    lines.extend(term.closed().await);
    assert_eq!(lines, ["-ERR not login: no login within 300 ms"]);

    // A logged-in connection is not held to it: it answers for longer than the timeout,
    // until LOGOUT starts the timeout again.
    let mut ada = Term::user(addr, &name("ada")).await;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(ada.ok("PING").await, "PONG");
    }
    assert_eq!(ada.ok("LOGOUT").await, "logout success");
    assert_eq!(
        ada.closed().await,
        ["-ERR not login: no login within 300 ms"]
    );
    cluster.close().await;
}

#[tokio::test]
async fn empty_lines_count_against_the_rate_limit() {
    let (cluster, _gateway, mut term) = rate_limited().await;
    term.send_raw(b"\n  \n\r\n\n\n").await;
    assert_eq!(
        term.closed().await,
        [
            "-ERR rate limit: at most 1 lines per second; slow down",
            "-ERR rate limit: at most 1 lines per second; slow down",
        ]
    );
    cluster.close().await;
}
