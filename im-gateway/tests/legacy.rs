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
use support::term::{PASSWORD, Term, field};
use support::*;

async fn start(friends_only: bool) -> (Cluster, Running, SocketAddr) {
    let cluster = Cluster::start(Bus::in_process(), friends_only).await;
    let gateway = cluster
        .gateway_with_legacy(&name("gw-"), settings(), 64 * 1024)
        .await;
    let addr = gateway.legacy.unwrap();
    (cluster, gateway, addr)
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
    assert_eq!(ada.ok("GETFRIENDS").await, "");
    assert_eq!(
        bob.ok(&format!("addfriend {}", ada.uid)).await,
        "friend added"
    );
    assert_eq!(
        ada.ok(&format!("ADDFRIEND {}", bob.uid)).await,
        "friend added"
    );
    let friends = ada.ok("GETFRIENDS").await;
    assert!(
        friends.starts_with(&format!("{}:bob", bob.uid)),
        "{friends}"
    );
    let friends = bob.ok("GETFRIENDS").await;
    assert!(
        friends.starts_with(&format!("{}:ada", ada.uid)),
        "{friends}"
    );
    assert_eq!(cy.ok("GETFRIENDS").await, "");

    let id = ada.ok(&format!("SEND {} hello  bob \\o/", bob.uid)).await;
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

    let gid = ada.ok("CREATEGROUP crabs the crab club").await;
    assert_eq!(bob.ok(&format!("JOINGROUP {gid}")).await, "");
    assert_eq!(cy.ok(&format!("JoinGroup {gid}")).await, "");
    let id = ada.ok(&format!("SENDGROUP {gid} hi all")).await;
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
        assert_eq!(term.pull().await, (Vec::new(), "0".to_owned()));
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
    let gid = ada.ok("CREATEGROUP club").await;
    bob.ok(&format!("JOINGROUP {gid}")).await;
    assert_eq!(bob.ok("LOGOUT").await, "");
    assert!(bob.closed().await.is_empty());

    let mut sent = Vec::new();
    for text in ["one", "two"] {
        sent.push(ada.ok(&format!("SEND {} {text}", bob.uid)).await);
    }
    sent.push(ada.ok(&format!("SENDGROUP {gid} in the club")).await);
    sent.push(ada.ok(&format!("SEND {} three", bob.uid)).await);

    let mut bob = Term::connect(addr).await;
    let uid = bob.ok(&format!("LOGIN {bob_name} {PASSWORD}")).await;
    bob.uid = uid.parse().unwrap();
    // A message pushed before the PULL is not shown again by it.
    ada.ok(&format!("SEND {} four", bob.uid)).await;
    assert_eq!(field(&bob.push().await, "text"), "four");
    let (messages, count) = bob.pull().await;
    assert_eq!(count, "4");
    let ids: Vec<&str> = messages.iter().map(|m| field(m, "id")).collect();
    assert_eq!(ids, sent);
    let texts: Vec<&str> = messages.iter().map(|m| field(m, "text")).collect();
    assert_eq!(texts, ["one", "two", "in the club", "three"]);
    assert_eq!(field(&messages[2], "group"), gid);
    assert_eq!(bob.pull().await, (Vec::new(), "0".to_owned()));

    // Nothing was deleted: a client-protocol login of Bob syncs the whole conversation.
    let mut tcp = Client::tcp(gateway.tcp).await;
    let session = tcp.login(&bob_name, "phone").await;
    assert_eq!(session.user_id.to_string(), uid);
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
    let friends = bob.ok("GETFRIENDS").await;
    assert!(
        friends.starts_with(&format!("{}:", ada.user_id())),
        "{friends}"
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
    bob2.ok(&format!("LOGIN {} {PASSWORD}", bob.name)).await;
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

    let id = bob.ok(&format!("SEND {} back at you", ada.user_id())).await;
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
    assert_eq!(term.err("PULL").await, "log in first");
    assert_eq!(term.err("SEND 1 hi").await, "log in first");
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
    term.ok(&format!("REGISTER {ada} {PASSWORD}")).await;
    term.ok(&format!("LOGIN {ada} {PASSWORD}")).await;
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
    assert_eq!(other.ok("GETFRIENDS").await, "");

    assert_eq!(term.ok("LOGOUT").await, "");
    assert!(term.closed().await.is_empty());
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
    bob.ok(&format!("LOGIN {bob_name} {PASSWORD}")).await;
    let (first, count) = bob.pull().await;
    assert_eq!((first.len(), count.as_str()), (1000, "1000 more"));
    let (rest, count) = bob.pull().await;
    assert_eq!((rest.len(), count.as_str()), (50, "50"));
    let mut ids: Vec<&str> = first.iter().chain(&rest).map(|m| field(m, "id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1050);
    assert_eq!(bob.pull().await, (Vec::new(), "0".to_owned()));
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
    ada.ok(&format!("LOGIN {ada_name} {PASSWORD}")).await;

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

#[tokio::test]
async fn lines_are_rate_limited() {
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
    let mut term = Term::connect(gateway.legacy.unwrap()).await;
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
