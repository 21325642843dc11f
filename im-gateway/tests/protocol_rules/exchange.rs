//! One exchange of every command and every push over JSON WebSocket frames: each reply is
//! checked to be a success of the body docs/client-protocol.md names, and the frames are
//! printed (`cargo test -p im-gateway --test protocol_rules exchange -- --nocapture`) as
//! the doc's worked examples show them. The server serialises each message with the same
//! serde code the test prints it with, so the printed text is what crossed the wire.

use im_common::bus::Bus;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Cursor, Login, Logout, Ping, Request, Resume, ServerMessage, Typing};
use im_proto::{
    CreateGroupRequest, DeviceKind, EditRequest, Empty, GetProfilesRequest, GroupId, GroupRole,
    GroupUser, GroupUsers, JoinPolicy, JoinRequest, ListFriendRequestsRequest, MarkReadRequest,
    MembersRequest, MuteAllRequest, MuteRequest, RecallRequest, RegisterRequest,
    RespondFriendRequestRequest, RespondJoinRequest, SearchUserRequest, SendFriendRequestRequest,
    SendGroupRequest, SendRequest, SetRoleRequest, SyncRequest, UpdateGroupRequest,
    UpdateProfileRequest, UserId, UserIds,
};

use crate::support::{Client, Cluster, name, settings};

/// A client whose frames are printed, named in the output.
struct Speaker {
    who: &'static str,
    client: Client,
    next_id: u64,
}

impl Speaker {
    async fn connect(who: &'static str, gateway: &crate::support::Running) -> Speaker {
        Speaker {
            who,
            client: Client::ws(gateway.ws, true).await,
            next_id: 1,
        }
    }

    /// Sends `command` and returns its reply, which must be `body_name`; pushes that come
    /// meanwhile are printed and dropped.
    async fn ok(&mut self, body_name: &str, command: Command) -> Body {
        let request = Request {
            id: self.next_id,
            command: Some(command),
        };
        self.next_id += 1;
        println!(
            "{} → {}",
            self.who,
            serde_json::to_string(&request).unwrap()
        );
        self.client.send(&request).await;
        loop {
            let message = self.client.next().await.expect("the connection stays open");
            self.print(&message);
            if message.id == request.id {
                assert!(message.error.is_none(), "{message:?}");
                let body = message.body.expect("a body");
                assert_eq!(body_name_of(&body), body_name, "{body:?}");
                return body;
            }
            assert_eq!(message.id, 0, "{message:?}");
        }
    }

    /// Waits for a push of `body_name`, printing it (and the pushes before it).
    async fn push(&mut self, body_name: &str) -> Body {
        loop {
            let message = self.client.next().await.expect("a push");
            self.print(&message);
            assert_eq!(message.id, 0, "{message:?}");
            let body = message.body.expect("a body");
            if body_name_of(&body) == body_name {
                return body;
            }
        }
    }

    fn print(&self, message: &ServerMessage) {
        println!("{} ← {}", self.who, serde_json::to_string(message).unwrap());
    }
}

/// The JSON name of a body's oneof case.
fn body_name_of(body: &Body) -> String {
    let message = ServerMessage {
        id: 0,
        error: None,
        body: Some(body.clone()),
    };
    let json = serde_json::to_value(&message).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), 1, "{json}");
    object.keys().next().unwrap().clone()
}

fn user(user_id: u64) -> UserId {
    UserId { user_id }
}

#[tokio::test]
async fn every_command_and_push_over_json() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let gateway = cluster.gateway(&name("gw-exchange-"), settings()).await;
    let mut alice = Speaker::connect("alice", &gateway).await;
    let mut bob = Speaker::connect("bob", &gateway).await;
    let mut carol = Speaker::connect("carol", &gateway).await;

    println!("## account");
    let register = |name: &str| {
        Command::Register(RegisterRequest {
            name: name.to_owned(),
            password: "secret-pw".to_owned(),
            nickname: String::new(),
        })
    };
    let login = |name: &str, device: &str| {
        Command::Login(Login {
            name: name.to_owned(),
            password: "secret-pw".to_owned(),
            device_id: device.to_owned(),
            device_kind: DeviceKind::Web as i32,
            ..Login::default()
        })
    };
    alice.ok("profile", register("alice")).await;
    let Body::Session(session) = alice.ok("session", login("alice", "browser")).await else {
        unreachable!()
    };
    alice.ok("pong", Command::Ping(Ping {})).await;
    bob.ok("profile", register("bob")).await;
    let Body::Session(bob_session) = bob.ok("session", login("bob", "phone")).await else {
        unreachable!()
    };
    carol.ok("profile", register("carol")).await;
    let Body::Session(carol_session) = carol.ok("session", login("carol", "laptop")).await else {
        unreachable!()
    };
    // A fresh database: the ids the doc's examples show.
    let (a, b, c) = (1, 2, 3);
    assert_eq!(
        (session.user_id, bob_session.user_id, carol_session.user_id),
        (a, b, c)
    );

    println!("## users and friends");
    alice
        .ok(
            "profiles",
            Command::SearchUser(SearchUserRequest {
                name: "bob".to_owned(),
            }),
        )
        .await;
    let Body::FriendRequest(request) = alice
        .ok(
            "friendRequest",
            Command::AddFriend(SendFriendRequestRequest {
                to_user_id: b,
                message: "hi, it's alice".to_owned(),
            }),
        )
        .await
    else {
        unreachable!()
    };
    bob.push("friendRequested").await;
    bob.ok(
        "friendRequests",
        Command::ListFriendRequests(ListFriendRequestsRequest { outgoing: false }),
    )
    .await;
    bob.ok(
        "friendRequest",
        Command::RespondFriend(RespondFriendRequestRequest {
            request_id: request.request_id,
            accept: true,
        }),
    )
    .await;
    alice.push("friendResponded").await;
    alice.ok("profiles", Command::ListFriends(Empty {})).await;
    alice.ok("profile", Command::GetProfile(user(b))).await;
    alice
        .ok(
            "profiles",
            Command::GetProfiles(GetProfilesRequest {
                user_ids: vec![a, b, c],
            }),
        )
        .await;
    alice
        .ok(
            "profile",
            Command::UpdateProfile(UpdateProfileRequest {
                nickname: Some("Alice".to_owned()),
                bio: Some("likes tea".to_owned()),
                avatar: None,
            }),
        )
        .await;
    alice
        .ok(
            "statuses",
            Command::QueryStatus(UserIds {
                user_ids: vec![b, c],
            }),
        )
        .await;
    alice.ok("ok", Command::Block(user(c))).await;
    alice.ok("userIds", Command::ListBlocked(Empty {})).await;
    alice.ok("ok", Command::Unblock(user(c))).await;
    // Presence: Bob's only connection closes (offline), then he logs in again (online).
    drop(bob);
    alice.push("presence").await;
    let mut bob = Speaker::connect("bob", &gateway).await;
    bob.ok("session", login("bob", "phone")).await;
    alice.push("presence").await;

    println!("## messages");
    let conversation = "d:1:2".to_owned();
    let Body::Ack(ack) = alice
        .ok(
            "ack",
            Command::Send(SendRequest {
                to_user_id: b,
                client_msg_id: "c-1".to_owned(),
                body: "hi bob".to_owned(),
            }),
        )
        .await
    else {
        unreachable!()
    };
    bob.push("message").await;
    bob.ok(
        "synced",
        Command::Sync(SyncRequest {
            conversation_id: conversation.clone(),
            after_seq: 0,
            limit: 50,
        }),
    )
    .await;
    bob.ok("conversations", Command::ListConversations(Empty {}))
        .await;
    bob.ok(
        "read",
        Command::MarkRead(MarkReadRequest {
            conversation_id: conversation.clone(),
            seq: ack.seq,
        }),
    )
    .await;
    alice.push("readReceipt").await;
    bob.ok(
        "ok",
        Command::Typing(Typing {
            conversation_id: conversation.clone(),
        }),
    )
    .await;
    alice.push("typing").await;
    alice
        .ok(
            "ack",
            Command::Edit(EditRequest {
                msg_id: ack.msg_id,
                client_msg_id: "c-2".to_owned(),
                body: "hi Bob".to_owned(),
            }),
        )
        .await;
    bob.push("edited").await;
    alice
        .ok(
            "ack",
            Command::Recall(RecallRequest {
                msg_id: ack.msg_id,
                client_msg_id: "c-3".to_owned(),
            }),
        )
        .await;
    bob.push("recalled").await;

    println!("## groups");
    let Body::Group(group) = alice
        .ok(
            "group",
            Command::CreateGroup(CreateGroupRequest {
                name: "tea club".to_owned(),
                description: "Tuesdays".to_owned(),
                join_policy: JoinPolicy::Approval as i32,
                member_ids: vec![b],
            }),
        )
        .await
    else {
        unreachable!()
    };
    let g = group.group_id;
    alice
        .ok(
            "userIds",
            Command::Invite(GroupUsers {
                group_id: g,
                user_ids: vec![c],
            }),
        )
        .await;
    carol
        .ok("ok", Command::LeaveGroup(GroupId { group_id: g }))
        .await;
    carol
        .ok(
            "joined",
            Command::JoinGroup(JoinRequest {
                group_id: g,
                message: "may I?".to_owned(),
            }),
        )
        .await;
    alice
        .ok(
            "joinRequests",
            Command::ListJoinRequests(GroupId { group_id: g }),
        )
        .await;
    alice
        .ok(
            "ok",
            Command::RespondJoin(RespondJoinRequest {
                group_id: g,
                user_id: c,
                accept: true,
            }),
        )
        .await;
    alice
        .ok(
            "ack",
            Command::SendGroup(SendGroupRequest {
                group_id: g,
                client_msg_id: "c-4".to_owned(),
                body: "welcome".to_owned(),
            }),
        )
        .await;
    carol.push("message").await;
    alice
        .ok(
            "members",
            Command::Members(MembersRequest {
                group_id: g,
                after_user_id: 0,
                limit: 10,
            }),
        )
        .await;
    alice
        .ok(
            "ok",
            Command::SetRole(SetRoleRequest {
                group_id: g,
                user_id: b,
                role: GroupRole::Admin as i32,
            }),
        )
        .await;
    alice
        .ok(
            "ok",
            Command::Mute(MuteRequest {
                group_id: g,
                user_id: c,
                until_ms: im_common::ids::now_ms() + 3_600_000,
            }),
        )
        .await;
    alice
        .ok(
            "ok",
            Command::Unmute(GroupUser {
                group_id: g,
                user_id: c,
            }),
        )
        .await;
    alice
        .ok(
            "ok",
            Command::MuteAll(MuteAllRequest {
                group_id: g,
                muted: true,
            }),
        )
        .await;
    alice
        .ok("group", Command::GroupInfo(GroupId { group_id: g }))
        .await;
    alice
        .ok(
            "group",
            Command::UpdateGroup(UpdateGroupRequest {
                group_id: g,
                name: None,
                description: Some("Tuesdays and Fridays".to_owned()),
                join_policy: Some(JoinPolicy::Open as i32),
            }),
        )
        .await;
    alice.ok("groups", Command::MyGroups(Empty {})).await;
    alice
        .ok(
            "ok",
            Command::Kick(GroupUser {
                group_id: g,
                user_id: c,
            }),
        )
        .await;
    alice
        .ok("ok", Command::DismissGroup(GroupId { group_id: g }))
        .await;
    alice.ok("ok", Command::RemoveFriend(user(b))).await;

    println!("## session");
    let mut again = Speaker::connect("alice2", &gateway).await;
    again
        .ok(
            "resumed",
            Command::Resume(Resume {
                token: session.token.clone(),
                device_kind: DeviceKind::Web as i32,
                cursors: vec![Cursor {
                    conversation_id: conversation.clone(),
                    last_seq: 1,
                }],
            }),
        )
        .await;
    again.ok("ok", Command::Logout(Logout {})).await;
    alice.push("kicked").await;
    let mut gateway = gateway;
    gateway.shutdown();
    bob.push("goAway").await;
    gateway.stopped().await;
    cluster.close().await;
}
