//! The `im-cli` binary against a scripted gateway: what a person types and what the
//! terminal shows, bad input included.

mod support;

use std::process::Stdio;

use im_client::im_proto::client::request::Command;
use im_client::im_proto::client::server_message::Body;
use im_client::im_proto::client::{Code, Recalled};
use im_client::im_proto::{
    Conversation, Conversations, FriendRequest, FriendRequestState, GroupInfo, MessageKind,
    Profiles, SendAck, UserProfile,
};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

struct Cli {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Cli {
    fn start(address: &str) -> Cli {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_im-cli"))
            .args(["--server", address, "--device", "test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Cli { child, stdout }
    }

    async fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Reads lines until one contains `text`; returns it.
    async fn expect(&mut self, text: &str) -> String {
        let wait = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                if line.contains(text) {
                    return line;
                }
            }
            panic!("im-cli ended before printing {text:?}");
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("im-cli did not print {text:?}"))
    }
}

fn profile(user_id: u64, name: &str) -> UserProfile {
    UserProfile {
        user_id,
        name: name.into(),
        ..UserProfile::default()
    }
}

fn conversations(unread: u64) -> Body {
    let conversation = Conversation {
        conversation_id: "d:1:2".into(),
        peer_id: 2,
        last_seq: 1,
        unread,
        last_message: Some(entry("d:1:2", 1, 2)),
        ..Conversation::default()
    };
    Body::Conversations(Conversations {
        conversations: vec![conversation],
    })
}

#[tokio::test]
async fn a_person_logs_in_chats_and_mistypes() {
    let gateway = FakeGateway::start().await;
    let mut cli = Cli::start(&gateway.address());
    let mut conn = gateway.accept().await;
    cli.expect("-- connected").await;

    cli.type_line("/login alice pw").await;
    let (id, command) = conn.recv().await;
    let Command::Login(login) = command else {
        panic!("{command:?}")
    };
    assert_eq!(
        (
            login.name.as_str(),
            login.password.as_str(),
            login.device_id.as_str()
        ),
        ("alice", "pw", "test")
    );
    conn.reply(id, Body::Session(session(1))).await;
    for unread in [0, 1] {
        let (id, command) = conn.recv().await;
        assert!(
            matches!(command, Command::ListConversations(_)),
            "{command:?}"
        );
        conn.reply(id, conversations(unread)).await;
    }
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::GetProfiles(ref r) if r.user_ids == [2]),
        "{command:?}"
    );
    conn.reply(
        id,
        Body::Profiles(Profiles {
            profiles: vec![profile(2, "bob")],
        }),
    )
    .await;
    cli.expect("-- logged in as alice (id 1)").await;
    cli.expect("bob: 1 unread").await;

    let mut hello = entry("d:1:2", 2, 2);
    hello.body = "hello alice".into();
    conn.push(Body::Message(hello)).await;
    cli.expect("bob → you: hello alice  (/chat bob to answer)")
        .await;

    cli.type_line("/chat bob").await;
    cli.expect("-- talking to bob").await;
    cli.type_line("hi bob").await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::Send(ref s) if s.to_user_id == 2 && s.body == "hi bob"),
        "{command:?}"
    );
    let ack = SendAck {
        msg_id: 30,
        seq: 3,
        conversation_id: "d:1:2".into(),
        ..SendAck::default()
    };
    conn.reply(id, Body::Ack(ack)).await;
    cli.expect("you → bob: hi bob (seq 3, #30)").await;

    let mut group = entry("g:9", 1, 2);
    group.body = "standup?".into();
    conn.push(Body::Message(group)).await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::GroupInfo(ref g) if g.group_id == 9),
        "{command:?}"
    );
    let info = GroupInfo {
        group_id: 9,
        name: "devs".into(),
        ..GroupInfo::default()
    };
    conn.reply(id, Body::Group(info)).await;
    cli.expect("bob → #devs: standup?  (/g 9 to answer)").await;
    let mut recall = entry("d:1:2", 4, 2);
    recall.set_kind(MessageKind::Recall);
    recall.ref_msg_id = 102;
    conn.push(Body::Recalled(Recalled {
        event: Some(recall),
    }))
    .await;
    cli.expect("bob recalled message #102").await;

    for (line, answer) in [
        ("", None),
        ("/accept x", Some("error: not a number: x")),
        ("/frobnicate", Some("error: unknown command /frobnicate")),
        (
            "/login alice",
            Some("error: usage: /login <name> <password>"),
        ),
    ] {
        cli.type_line(line).await;
        if let Some(answer) = answer {
            cli.expect(answer).await;
        }
    }
    cli.type_line(&"y".repeat(100_000)).await;
    cli.expect("error: line longer than").await;

    cli.type_line("/add carol").await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::SearchUser(ref s) if s.name == "carol"),
        "{command:?}"
    );
    conn.reply(id, Body::Profiles(Profiles::default())).await;
    cli.expect("error: no user named carol").await;

    cli.type_line("/add bob").await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::AddFriend(ref r) if r.to_user_id == 2),
        "{command:?}"
    );
    conn.fail(id, Code::AlreadyExists, "already friends with bob")
        .await;
    cli.expect("error: already friends with bob").await;

    // Friend requests pushed: one to alice from carol, and bob's answer to alice's.
    let asked = FriendRequest {
        request_id: 7,
        from_user_id: 3,
        to_user_id: 1,
        message: "it's carol".into(),
        state: FriendRequestState::Pending as i32,
        ..FriendRequest::default()
    };
    conn.push(Body::FriendRequested(asked)).await;
    let (id, command) = conn.recv().await;
    assert!(
        matches!(command, Command::GetProfiles(ref r) if r.user_ids == [3]),
        "{command:?}"
    );
    conn.reply(
        id,
        Body::Profiles(Profiles {
            profiles: vec![profile(3, "carol")],
        }),
    )
    .await;
    cli.expect("-- friend request from carol: it's carol  (/accept 7 or /reject 7)")
        .await;
    for (state, said) in [
        (
            FriendRequestState::Rejected,
            "-- bob declined your friend request",
        ),
        (
            FriendRequestState::Accepted,
            "-- bob accepted your friend request",
        ),
    ] {
        let answered = FriendRequest {
            request_id: 8,
            from_user_id: 1,
            to_user_id: 2,
            state: state as i32,
            ..FriendRequest::default()
        };
        conn.push(Body::FriendResponded(answered)).await;
        cli.expect(said).await;
    }

    cli.type_line("/quit").await;
    let status = tokio::time::timeout(DEADLINE, cli.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn an_unreachable_gateway_is_one_line_and_a_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_im-cli"))
        .args(["--server", &address])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("im-cli: cannot connect to tcp://"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
