//! The rules docs/client-protocol.md states, each checked through a gateway: conversation
//! ids in one spelling, blank bodies refused, replies as they are ready, one login per
//! connection, token before password, sync pages, the typing interval, what a non-member
//! sees of a group, friends-only messaging, the close after a flood, mutes and join
//! requests, JSON errors; and one exchange of every command over JSON, the doc's examples.

mod support;

use std::collections::HashSet;

use im_common::bus::Bus;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Login, Ping, Request, Resume, ServerMessage, Typing};
use im_proto::{
    CreateGroupRequest, EditRequest, Empty, GroupId, GroupRole, GroupUser, GroupUsers, JoinPolicy,
    JoinRequest, MarkReadRequest, MembersRequest, MuteAllRequest, MuteRequest, RespondJoinRequest,
    SendGroupRequest, SendRequest, SetRoleRequest, SyncRequest, UpdateGroupRequest, UserIds,
};
use support::*;

/// Every command over JSON, printed as the doc's worked examples show it.
#[path = "protocol_rules/exchange.rs"]
mod exchange;

fn error_of(message: &ServerMessage) -> (Code, String) {
    let error = message.error.as_ref().expect("an error");
    (Code::try_from(error.code).unwrap(), error.message.clone())
}

fn send(to: u64, id: &str, body: &str) -> Command {
    Command::Send(SendRequest {
        to_user_id: to,
        client_msg_id: id.to_owned(),
        body: body.to_owned(),
    })
}

fn sync(conversation_id: &str, limit: u32) -> Command {
    Command::Sync(SyncRequest {
        conversation_id: conversation_id.to_owned(),
        after_seq: 0,
        limit,
    })
}

fn group_of(body: Body) -> u64 {
    let Body::Group(group) = body else {
        panic!("a group: {body:?}")
    };
    group.group_id
}

/// Two friends logged in on one gateway (friends-only messaging when `friends_only`).
async fn two_friends(friends_only: bool, settings: Settings) -> (Cluster, Running, Client, Client) {
    let cluster = Cluster::start(Bus::in_process(), friends_only).await;
    let gateway = cluster.gateway(&name("gw-rules-"), settings).await;
    let mut ada = Client::tcp(gateway.tcp).await;
    ada.register_login(&name("ada"), "d").await;
    let mut bob = Client::ws(gateway.ws, true).await;
    bob.register_login(&name("bob"), "d").await;
    befriend(&mut ada, &mut bob).await;
    (cluster, gateway, ada, bob)
}

#[tokio::test]
async fn conversation_ids_in_another_spelling_are_refused() {
    let (cluster, gateway, mut ada, mut bob) = two_friends(true, settings()).await;
    let (lo, hi) = (
        ada.user_id().min(bob.user_id()),
        ada.user_id().max(bob.user_id()),
    );
    ada.ok(send(bob.user_id(), "c-1", "hi")).await;
    let group = group_of(
        ada.ok(Command::CreateGroup(CreateGroupRequest {
            name: "g".to_owned(),
            member_ids: vec![bob.user_id()],
            ..CreateGroupRequest::default()
        }))
        .await,
    );
    let direct = format!("d:{lo}:{hi}");
    let canonical = |id: &str| {
        format!(
            "conversation_id is not in canonical form: write it {id} (ids in decimal without \
             sign, leading zeros or spaces; the lower user id first)"
        )
    };
    let spellings = [
        (format!("d:0{lo}:{hi}"), direct.clone()),
        (format!("d:{lo}:0{hi}"), direct.clone()),
        (format!("d:+{lo}:{hi}"), direct.clone()),
        (format!("d:{hi}:{lo}"), direct.clone()),
        (format!(" d:{lo}:{hi}"), direct.clone()),
        (format!("d:{lo}:{hi} "), direct.clone()),
        (format!("d: {lo}:{hi}"), direct.clone()),
        (format!("g:0{group}"), format!("g:{group}")),
        (format!("g:+{group}"), format!("g:{group}")),
        (format!("g:{group}\n"), format!("g:{group}")),
    ];
    for (spelling, id) in &spellings {
        let expected = (Code::InvalidArgument, canonical(id));
        let reply = ada.call(sync(spelling, 0)).await;
        assert_eq!(error_of(&reply), expected, "sync {spelling:?}");
        let reply = ada
            .call(Command::MarkRead(MarkReadRequest {
                conversation_id: spelling.clone(),
                seq: 1,
            }))
            .await;
        assert_eq!(error_of(&reply), expected, "mark_read {spelling:?}");
        let reply = ada
            .call(Command::Typing(Typing {
                conversation_id: spelling.clone(),
            }))
            .await;
        assert_eq!(error_of(&reply), expected, "typing {spelling:?}");
        // The same over JSON, where the id is a string the client wrote.
        let reply = bob.call(sync(spelling, 0)).await;
        assert_eq!(error_of(&reply), expected, "JSON sync {spelling:?}");
    }
    let rule = "conversation_id must be d:<lower user id>:<higher user id> or g:<group id>, \
                ids in decimal from 1, without sign, leading zeros or spaces";
    for nonsense in ["", "d:x", "g:0", &format!("d:{lo}:{lo}"), "c:1"] {
        let reply = ada.call(sync(nonsense, 0)).await;
        assert_eq!(
            error_of(&reply),
            (Code::InvalidArgument, rule.to_owned()),
            "{nonsense:?}"
        );
    }
    // The canonical spellings work.
    let Body::Synced(synced) = ada.ok(sync(&direct, 0)).await else {
        panic!("synced")
    };
    assert_eq!(synced.messages.len(), 1);
    ada.ok(sync(&format!("g:{group}"), 0)).await;

    // A resume's cursors too: refused, and the new connection stays logged out.
    let token = ada.session.as_ref().unwrap().token.clone();
    let resume = |conversation_id: &str| {
        Command::Resume(Resume {
            token: token.clone(),
            cursors: vec![im_proto::client::Cursor {
                conversation_id: conversation_id.to_owned(),
                last_seq: 1,
            }],
            ..Resume::default()
        })
    };
    let mut again = Client::tcp(gateway.tcp).await;
    for (spelling, id) in &spellings {
        let reply = again.call(resume(spelling)).await;
        assert_eq!(
            error_of(&reply),
            (Code::InvalidArgument, canonical(id)),
            "resume {spelling:?}"
        );
    }
    let reply = again.call(sync(&direct, 0)).await;
    assert_eq!(error_of(&reply).0, Code::Unauthenticated);
    let Body::Resumed(resumed) = again.ok(resume(&direct)).await else {
        panic!("resumed")
    };
    assert!(resumed.behind.iter().all(|b| b.conversation_id != direct));
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn bodies_of_white_space_alone_are_refused() {
    let (cluster, gateway, mut ada, mut bob) = two_friends(true, settings()).await;
    let group = group_of(
        ada.ok(Command::CreateGroup(CreateGroupRequest {
            name: "g".to_owned(),
            member_ids: vec![bob.user_id()],
            ..CreateGroupRequest::default()
        }))
        .await,
    );
    let Body::Ack(ack) = ada.ok(send(bob.user_id(), "first", "hello")).await else {
        panic!("an ack")
    };
    let refused = (
        Code::InvalidArgument,
        "body must not be empty or only white space".to_owned(),
    );
    for (n, blank) in ["", " ", "\t", "\n\n", " \r\n ", "\u{a0}", "\u{3000}"]
        .into_iter()
        .enumerate()
    {
        let reply = ada.call(send(bob.user_id(), &format!("s{n}"), blank)).await;
        assert_eq!(error_of(&reply), refused, "send {blank:?}");
        let reply = bob
            .call(Command::SendGroup(SendGroupRequest {
                group_id: group,
                client_msg_id: format!("g{n}"),
                body: blank.to_owned(),
            }))
            .await;
        assert_eq!(error_of(&reply), refused, "send_group {blank:?}");
        let reply = ada
            .call(Command::Edit(EditRequest {
                msg_id: ack.msg_id,
                client_msg_id: format!("e{n}"),
                body: blank.to_owned(),
            }))
            .await;
        assert_eq!(error_of(&reply), refused, "edit {blank:?}");
    }
    // Nothing was stored: the conversation still holds the first message alone.
    let Body::Synced(synced) = bob.ok(sync(&ack.conversation_id, 0)).await else {
        panic!("synced")
    };
    assert_eq!(synced.last_seq, 1);
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn replies_come_when_ready_and_carry_their_request_ids() {
    let (cluster, gateway, mut ada, bob) = two_friends(true, settings()).await;
    let conversation = format!(
        "d:{}:{}",
        ada.user_id().min(bob.user_id()),
        ada.user_id().max(bob.user_id())
    );
    // Syncs (which wait on the database) and then a ping (which waits on nothing), all
    // sent before any reply is read: the ping's reply comes before some sync's.
    let mut overtaken = false;
    let mut next_id = 1000;
    for _ in 0..50 {
        let mut ids = Vec::new();
        for n in 0..9 {
            next_id += 1;
            let command = if n < 8 {
                sync(&conversation, 0)
            } else {
                Command::Ping(Ping {})
            };
            ada.send(&Request {
                id: next_id,
                command: Some(command),
            })
            .await;
            ids.push(next_id);
        }
        let ping = next_id;
        let mut order = Vec::new();
        while order.len() < ids.len() {
            let reply = ada.next().await.expect("a reply");
            if reply.id == 0 {
                continue;
            }
            assert!(reply.error.is_none(), "{reply:?}");
            let is_pong = matches!(reply.body, Some(Body::Pong(_)));
            assert_eq!(is_pong, reply.id == ping, "{reply:?}");
            order.push(reply.id);
        }
        let answered: HashSet<u64> = order.iter().copied().collect();
        assert_eq!(answered, ids.iter().copied().collect(), "each once");
        if order.last() != Some(&ping) {
            overtaken = true;
            break;
        }
    }
    assert!(overtaken, "the ping never overtook a sync sent before it");
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_logged_in_connection_refuses_another_login_and_keeps_its_session() {
    let (cluster, gateway, mut ada, bob) = two_friends(true, settings()).await;
    let ada_id = ada.user_id();
    let bob_session = bob.session.clone().unwrap();
    let refused = (
        Code::FailedPrecondition,
        "this connection is logged in already".to_owned(),
    );
    let by_password = Command::Login(Login {
        name: bob_session.profile.as_ref().unwrap().name.clone(),
        password: "secret-password".to_owned(),
        ..Login::default()
    });
    let by_token = Command::Login(Login {
        token: bob_session.token.clone(),
        ..Login::default()
    });
    let resume = Command::Resume(Resume {
        token: bob_session.token.clone(),
        ..Resume::default()
    });
    for command in [by_password, by_token, resume] {
        let reply = ada.call(command).await;
        assert_eq!(error_of(&reply), refused);
        assert!(!reply.error.unwrap().retryable);
    }
    // Still Ada's connection: her own profile, her conversation with Bob.
    let Body::Profile(me) = ada
        .ok(Command::GetProfile(im_proto::UserId { user_id: ada_id }))
        .await
    else {
        panic!("a profile")
    };
    assert_eq!(me.user_id, ada_id);
    ada.ok(send(bob.user_id(), "still-ada", "still me")).await;
    // Register is answered on a logged-in connection too, and changes nothing.
    let Body::Profile(new) = ada
        .ok(Command::Register(im_proto::RegisterRequest {
            name: name("later"),
            password: "secret-password".to_owned(),
            nickname: String::new(),
        }))
        .await
    else {
        panic!("a profile")
    };
    assert_ne!(new.user_id, ada_id);
    let Body::Profiles(friends) = ada.ok(Command::ListFriends(Empty {})).await else {
        panic!("profiles")
    };
    assert_eq!(friends.profiles.len(), 1);
    assert_eq!(friends.profiles[0].user_id, bob.user_id());
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_login_with_a_token_ignores_the_name_and_password_it_carries() {
    let (cluster, gateway, ada, bob) = two_friends(true, settings()).await;
    let ada_session = ada.session.clone().unwrap();
    let bob_name = bob
        .session
        .as_ref()
        .unwrap()
        .profile
        .as_ref()
        .unwrap()
        .name
        .clone();
    // Bob's name and password, Ada's token: Ada, on her session's device.
    let mut mixed = Client::tcp(gateway.tcp).await;
    let Body::Session(session) = mixed
        .ok(Command::Login(Login {
            name: bob_name.clone(),
            password: "secret-password".to_owned(),
            token: ada_session.token.clone(),
            device_id: "another-device".to_owned(),
            ..Login::default()
        }))
        .await
    else {
        panic!("a session")
    };
    assert_eq!(session.user_id, ada.user_id());
    assert_eq!(session.session_id, ada_session.session_id);
    assert_eq!(session.device_id, ada_session.device_id);
    assert_eq!(session.expires_at_ms, ada_session.expires_at_ms);
    // A wrong password beside a good token does not matter either; a bad token does, even
    // beside a good name and password.
    let mut wrong = Client::tcp(gateway.tcp).await;
    let reply = wrong
        .call(Command::Login(Login {
            name: bob_name.clone(),
            password: "not the password".to_owned(),
            token: ada_session.token.clone(),
            ..Login::default()
        }))
        .await;
    assert!(reply.error.is_none(), "{reply:?}");
    let mut bad_token = Client::tcp(gateway.tcp).await;
    let reply = bad_token
        .call(Command::Login(Login {
            name: bob_name,
            password: "secret-password".to_owned(),
            token: "not-a-token".to_owned(),
            ..Login::default()
        }))
        .await;
    assert_eq!(error_of(&reply).0, Code::Unauthenticated, "{reply:?}");
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn sync_pages_hold_up_to_500_messages() {
    let (cluster, gateway, mut ada, bob) = two_friends(true, settings()).await;
    let Body::Ack(ack) = ada.ok(send(bob.user_id(), "one", "one")).await else {
        panic!("an ack")
    };
    let conversation = ack.conversation_id;
    for limit in [0, 1, 200, 500] {
        let Body::Synced(synced) = ada.ok(sync(&conversation, limit)).await else {
            panic!("synced")
        };
        assert_eq!(synced.messages.len(), 1, "limit {limit}");
    }
    for limit in [501, 1000, u32::MAX] {
        let reply = ada.call(sync(&conversation, limit)).await;
        assert_eq!(
            error_of(&reply),
            (
                Code::InvalidArgument,
                format!("limit {limit} is above the maximum of 500")
            )
        );
    }
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn typing_is_passed_on_once_per_interval_per_connection() {
    let slow = Settings {
        typing_interval_ms: 600_000,
        ..settings()
    };
    let (cluster, gateway, mut ada, mut bob) = two_friends(true, slow).await;
    let conversation = format!(
        "d:{}:{}",
        ada.user_id().min(bob.user_id()),
        ada.user_id().max(bob.user_id())
    );
    let typing = || {
        Command::Typing(Typing {
            conversation_id: conversation.clone(),
        })
    };
    // Both answered `ok`; only the first is passed on. The read receipt after them goes the
    // same way to Bob's connection, so it is the next push if the second typing was dropped.
    ada.ok(typing()).await;
    ada.ok(typing()).await;
    ada.ok(Command::MarkRead(MarkReadRequest {
        conversation_id: conversation.clone(),
        seq: 0,
    }))
    .await;
    // Bob's other pushes (presence, the friend request he answered) are not in question.
    let signal = |b: &Body| matches!(b, Body::Typing(_) | Body::ReadReceipt(_));
    assert!(matches!(bob.push_where(signal).await, Body::Typing(_)));
    assert!(matches!(bob.push_where(signal).await, Body::ReadReceipt(_)));
    // The interval is the connection's: Ada's second connection is passed on at once.
    let mut ada2 = Client::tcp(gateway.tcp).await;
    ada2.login(
        &ada.session
            .as_ref()
            .unwrap()
            .profile
            .as_ref()
            .unwrap()
            .name
            .clone(),
        "d2",
    )
    .await;
    ada2.ok(typing()).await;
    let Body::Typing(notice) = bob.push_where(signal).await else {
        panic!("typing")
    };
    assert_eq!(notice.user_id, ada.user_id());
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_non_member_sees_an_open_groups_information_and_nothing_else() {
    let (cluster, gateway, mut owner, mut member) = two_friends(true, settings()).await;
    let mut stranger = Client::ws(gateway.ws, true).await;
    stranger.register_login(&name("stranger"), "d").await;
    let create = |join_policy: JoinPolicy, member: u64| {
        Command::CreateGroup(CreateGroupRequest {
            name: "club".to_owned(),
            description: String::new(),
            join_policy: join_policy as i32,
            member_ids: vec![member],
        })
    };
    let open = group_of(owner.ok(create(JoinPolicy::Open, member.user_id())).await);
    let closed = group_of(
        owner
            .ok(create(JoinPolicy::Approval, member.user_id()))
            .await,
    );
    member
        .ok(Command::SendGroup(SendGroupRequest {
            group_id: closed,
            client_msg_id: "m".to_owned(),
            body: "members only".to_owned(),
        }))
        .await;
    let not_member = (
        Code::PermissionDenied,
        "you are not a member of this group".to_owned(),
    );
    // An OPEN group's information is public; an APPROVAL group's is not.
    let Body::Group(info) = stranger
        .ok(Command::GroupInfo(GroupId { group_id: open }))
        .await
    else {
        panic!("a group")
    };
    assert_eq!(info.member_count, 2);
    for group in [open, closed] {
        let id = GroupId { group_id: group };
        let conversation = format!("g:{group}");
        let refused = [
            Command::Members(MembersRequest {
                group_id: group,
                ..MembersRequest::default()
            }),
            sync(&conversation, 0),
            Command::MarkRead(MarkReadRequest {
                conversation_id: conversation.clone(),
                seq: 1,
            }),
            Command::Typing(Typing {
                conversation_id: conversation.clone(),
            }),
            Command::SendGroup(SendGroupRequest {
                group_id: group,
                client_msg_id: format!("x{group}"),
                body: "let me in".to_owned(),
            }),
            Command::LeaveGroup(id),
            Command::ListJoinRequests(id),
            Command::Invite(GroupUsers {
                group_id: group,
                user_ids: vec![stranger.user_id()],
            }),
            Command::Kick(GroupUser {
                group_id: group,
                user_id: member.user_id(),
            }),
            Command::DismissGroup(id),
            Command::SetRole(SetRoleRequest {
                group_id: group,
                user_id: member.user_id(),
                role: GroupRole::Admin as i32,
            }),
            Command::Mute(MuteRequest {
                group_id: group,
                user_id: member.user_id(),
                until_ms: im_common::ids::now_ms() + 60_000,
            }),
            Command::Unmute(GroupUser {
                group_id: group,
                user_id: member.user_id(),
            }),
            Command::MuteAll(MuteAllRequest {
                group_id: group,
                muted: true,
            }),
            Command::UpdateGroup(UpdateGroupRequest {
                group_id: group,
                name: Some("mine now".to_owned()),
                ..UpdateGroupRequest::default()
            }),
            Command::RespondJoin(RespondJoinRequest {
                group_id: group,
                user_id: stranger.user_id(),
                accept: true,
            }),
        ];
        for command in refused {
            let reply = stranger.call(command.clone()).await;
            assert_eq!(error_of(&reply).0, Code::PermissionDenied, "{command:?}");
        }
        let reply = stranger.call(sync(&conversation, 0)).await;
        assert_eq!(error_of(&reply), not_member);
    }
    let reply = stranger
        .call(Command::GroupInfo(GroupId { group_id: closed }))
        .await;
    assert_eq!(error_of(&reply), not_member);
    // Their groups are not among the stranger's, and a group that does not exist is
    // NOT_FOUND where a non-member of an existing one is PERMISSION_DENIED.
    let Body::Groups(mine) = stranger.ok(Command::MyGroups(Empty {})).await else {
        panic!("groups")
    };
    assert!(mine.groups.is_empty());
    let missing = GroupId { group_id: 999_999 };
    let reply = stranger.call(Command::GroupInfo(missing)).await;
    assert_eq!(
        error_of(&reply),
        (Code::NotFound, "group not found".to_owned())
    );
    for command in [
        Command::Members(MembersRequest {
            group_id: missing.group_id,
            ..MembersRequest::default()
        }),
        Command::JoinGroup(JoinRequest {
            group_id: missing.group_id,
            message: String::new(),
        }),
        Command::LeaveGroup(missing),
    ] {
        let reply = stranger.call(command.clone()).await;
        assert_eq!(error_of(&reply).0, Code::NotFound, "{command:?}");
    }
    // The message service does not tell a missing group from one the user is not in.
    let reply = stranger
        .call(sync(&format!("g:{}", missing.group_id), 0))
        .await;
    assert_eq!(error_of(&reply), not_member);
    // Joining the OPEN group makes the stranger a member, who reads its history.
    let Body::Joined(joined) = stranger
        .ok(Command::JoinGroup(JoinRequest {
            group_id: open,
            message: String::new(),
        }))
        .await
    else {
        panic!("joined")
    };
    assert!(joined.joined);
    stranger.ok(sync(&format!("g:{open}"), 0)).await;
    drop(owner);
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn one_to_one_messages_need_friendship_unless_configured_otherwise() {
    assert!(im_message::Settings::default().friends_only);
    for friends_only in [true, false] {
        let cluster = Cluster::start(Bus::in_process(), friends_only).await;
        let gateway = cluster.gateway(&name("gw-friends-"), settings()).await;
        let mut ada = Client::tcp(gateway.tcp).await;
        ada.register_login(&name("ada"), "d").await;
        let mut bob = Client::tcp(gateway.tcp).await;
        bob.register_login(&name("bob"), "d").await;
        let reply = ada.call(send(bob.user_id(), "hi", "hi stranger")).await;
        if friends_only {
            assert_eq!(
                error_of(&reply),
                (
                    Code::PermissionDenied,
                    "you can only message your friends".to_owned()
                )
            );
        } else {
            assert!(reply.error.is_none(), "{reply:?}");
        }
        // Blocking refuses either way.
        bob.ok(Command::Block(im_proto::UserId {
            user_id: ada.user_id(),
        }))
        .await;
        let reply = ada.call(send(bob.user_id(), "hi-2", "hi again")).await;
        assert_eq!(error_of(&reply).0, Code::PermissionDenied);
        gateway.stopped().await;
        cluster.close().await;
    }
}

#[tokio::test]
async fn a_connection_closes_at_max_rate_limited_plus_one_refusals_in_a_row() {
    let strict = Settings {
        rate_per_sec: 1,
        rate_burst: 2,
        max_rate_limited: 3,
        ..settings()
    };
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let gateway = cluster.gateway(&name("gw-flood-"), strict).await;
    let mut flood = Client::tcp(gateway.tcp).await;
    for id in 1..=20 {
        flood
            .send(&Request {
                id,
                command: Some(Command::Ping(Ping {})),
            })
            .await;
    }
    let seen = flood.closed().await;
    // The burst is answered; then refusals, each its request's; the fourth in a row is the
    // last thing sent before the close. (A token refilled meanwhile would answer one more
    // and start the count again.)
    let refused_in_a_row = seen.iter().rev().take_while(|m| m.error.is_some()).count();
    assert_eq!(refused_in_a_row, 4, "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(
        error_of(last),
        (
            Code::ResourceExhausted,
            "rate limit: at most 1 requests per second; slow down".to_owned()
        )
    );
    assert!(last.error.as_ref().unwrap().retryable);
    assert!(seen.len() < 20, "requests after the close were answered");
    assert_eq!(
        settings().max_rate_limited,
        200,
        "the documented default changed"
    );
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn mutes_last_until_an_absolute_time_and_join_requests_are_named_by_user() {
    let (cluster, gateway, mut owner, mut member) = two_friends(true, settings()).await;
    let group = group_of(
        owner
            .ok(Command::CreateGroup(CreateGroupRequest {
                name: "club".to_owned(),
                description: String::new(),
                join_policy: JoinPolicy::Approval as i32,
                member_ids: vec![member.user_id()],
            }))
            .await,
    );
    let mute = |until_ms| {
        Command::Mute(MuteRequest {
            group_id: group,
            user_id: member.user_id(),
            until_ms,
        })
    };
    // A duration where a time belongs is in the past: refused.
    let reply = owner.call(mute(60_000)).await;
    assert_eq!(
        error_of(&reply),
        (
            Code::InvalidArgument,
            "until_ms must be in the future (Unmute lifts a mute)".to_owned()
        )
    );
    let until = im_common::ids::now_ms() + 3_600_000;
    owner.ok(mute(until)).await;
    let Body::Members(members) = owner
        .ok(Command::Members(MembersRequest {
            group_id: group,
            ..MembersRequest::default()
        }))
        .await
    else {
        panic!("members")
    };
    let muted = members
        .members
        .iter()
        .find(|m| m.user_id == member.user_id())
        .unwrap();
    assert_eq!(muted.muted_until_ms, until);
    let reply = member
        .call(Command::SendGroup(SendGroupRequest {
            group_id: group,
            client_msg_id: "muted".to_owned(),
            body: "can I?".to_owned(),
        }))
        .await;
    assert_eq!(
        error_of(&reply),
        (
            Code::PermissionDenied,
            format!("you are muted in this group until {until} ms")
        )
    );

    // A join request is the asking user's: listed with their id, answered by it.
    let mut asker = Client::tcp(gateway.tcp).await;
    asker.register_login(&name("asker"), "d").await;
    for message in ["please", "please, again"] {
        let Body::Joined(joined) = asker
            .ok(Command::JoinGroup(JoinRequest {
                group_id: group,
                message: message.to_owned(),
            }))
            .await
        else {
            panic!("joined")
        };
        assert!(!joined.joined);
    }
    let Body::JoinRequests(requests) = owner
        .ok(Command::ListJoinRequests(GroupId { group_id: group }))
        .await
    else {
        panic!("join requests")
    };
    // One request per user and group; asking again keeps the first.
    assert_eq!(requests.requests.len(), 1);
    assert_eq!(requests.requests[0].user_id, asker.user_id());
    assert_eq!(requests.requests[0].message, "please");
    let respond = |accept| {
        Command::RespondJoin(RespondJoinRequest {
            group_id: group,
            user_id: asker.user_id(),
            accept,
        })
    };
    owner.ok(respond(true)).await;
    let reply = owner.call(respond(true)).await;
    assert_eq!(
        error_of(&reply),
        (Code::NotFound, "join request not found".to_owned())
    );
    asker.ok(sync(&format!("g:{group}"), 0)).await;
    let reply = owner
        .call(Command::Invite(GroupUsers {
            group_id: group,
            user_ids: vec![asker.user_id()],
        }))
        .await;
    assert!(
        matches!(reply.body, Some(Body::UserIds(UserIds { ref user_ids })) if user_ids.is_empty()),
        "{reply:?}"
    );
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn a_json_enum_value_out_of_range_is_explained_in_plain_words() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let gateway = cluster.gateway(&name("gw-json-"), settings()).await;
    let mut json = Client::ws(gateway.ws, true).await;
    json.send_text(r#"{"id":"1","login":{"deviceKind":9}}"#)
        .await;
    let reply = json.next().await.unwrap();
    assert_eq!(
        (reply.id, error_of(&reply)),
        (
            0,
            (
                Code::InvalidArgument,
                "not a valid request: invalid value: integer `9`, expected one of: \
                 [\"DEVICE_KIND_UNSPECIFIED\", \"DESKTOP\", \"MOBILE\", \"WEB\", \"TERMINAL\"] \
                 at line 1 column 33"
                    .to_owned()
            )
        )
    );
    json.send_text(r#"{"id":"2","login":{"deviceKind":"PHONE"}}"#)
        .await;
    let reply = json.next().await.unwrap();
    assert_eq!(
        error_of(&reply).1,
        "not a valid request: unknown variant `PHONE`, expected one of \
         `DEVICE_KIND_UNSPECIFIED`, `DESKTOP`, `MOBILE`, `WEB`, `TERMINAL` at line 1 column 39"
    );
    assert!(matches!(
        json.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));
    gateway.stopped().await;
    cluster.close().await;
}
