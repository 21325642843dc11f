//! What a user may ask about others, attacked through the gateway with a real session:
//! typing where the user may not write, and (docs/client-protocol.md, "What others see")
//! profiles and presence of strangers.

mod support;

use im_common::bus::Bus;
use im_common::ids::ConversationId;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, ServerMessage, Typing};
use im_proto::{CreateGroupRequest, GroupId, JoinPolicy, UserId};
use support::*;

fn typing(conversation: impl ToString) -> Command {
    Command::Typing(Typing {
        conversation_id: conversation.to_string(),
    })
}

fn refused(reply: &ServerMessage) -> &str {
    let error = reply.error.as_ref().unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(error.code, Code::PermissionDenied as i32, "{reply:?}");
    &error.message
}

async fn users(gateway: &Running, names: &[&str]) -> Vec<Client> {
    let mut clients = Vec::new();
    for who in names {
        let mut client = Client::tcp(gateway.tcp).await;
        client.register_login(&name(who), "phone").await;
        clients.push(client);
    }
    clients
}

#[tokio::test]
async fn typing_is_checked_on_every_request() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let mut clients = users(&gateway, &["ada", "bob", "mal"]).await;
    let [ada, bob, mal] = &mut clients[..] else {
        unreachable!()
    };
    let Body::Group(group) = ada
        .ok(Command::CreateGroup(CreateGroupRequest {
            name: "club".to_owned(),
            description: String::new(),
            join_policy: JoinPolicy::Open as i32,
            member_ids: vec![bob.user_id()],
        }))
        .await
    else {
        panic!("a group")
    };
    let club = ConversationId::Group(group.group_id);

    // Not a member (and a group that does not exist): refused, also when repeated within
    // the typing interval.
    for conversation in [club, ConversationId::Group(group.group_id + 1000)] {
        for _ in 0..2 {
            refused(&mal.call(typing(conversation)).await);
        }
    }
    // Someone else's 1:1 conversation.
    let theirs = ConversationId::direct(ada.user_id(), bob.user_id());
    refused(&mal.call(typing(theirs)).await);

    // Members may; a second Typing within the interval is `ok` too (only not passed on).
    for _ in 0..2 {
        bob.ok(typing(club)).await;
    }
    let Body::Typing(notice) = ada.push_where(|b| matches!(b, Body::Typing(_))).await else {
        unreachable!()
    };
    assert_eq!(notice.user_id, bob.user_id());

    // Kicked out: refused at once, whatever the gateway had cached of the member list.
    ada.ok(Command::Kick(im_proto::GroupUser {
        group_id: group.group_id,
        user_id: bob.user_id(),
    }))
    .await;
    refused(&bob.call(typing(club)).await);
    ada.ok(Command::DismissGroup(GroupId {
        group_id: group.group_id,
    }))
    .await;
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn typing_respects_blocks() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let mut clients = users(&gateway, &["bob", "mal", "cy"]).await;
    let [bob, mal, cy] = &mut clients[..] else {
        unreachable!()
    };
    bob.ok(Command::Block(UserId {
        user_id: mal.user_id(),
    }))
    .await;
    let with_bob = ConversationId::direct(mal.user_id(), bob.user_id());
    for _ in 0..2 {
        let why = refused(&mal.call(typing(with_bob)).await).to_owned();
        assert!(why.contains("does not accept"), "{why}");
    }
    // Cy's Typing, sent after Mal's, is the first Bob hears: Mal's never reached him.
    cy.ok(typing(ConversationId::direct(cy.user_id(), bob.user_id())))
        .await;
    let Body::Typing(notice) = bob.push_where(|b| matches!(b, Body::Typing(_))).await else {
        unreachable!()
    };
    assert_eq!(notice.user_id, cy.user_id());
    gateway.stopped().await;
    cluster.close().await;
}

fn ids_of(profiles: &im_proto::Profiles) -> Vec<u64> {
    profiles.profiles.iter().map(|p| p.user_id).collect()
}

async fn profiles(client: &mut Client, user_ids: Vec<u64>) -> Vec<u64> {
    match client
        .ok(Command::GetProfiles(im_proto::GetProfilesRequest {
            user_ids,
        }))
        .await
    {
        Body::Profiles(found) => ids_of(&found),
        other => panic!("{other:?}"),
    }
}

async fn statuses(client: &mut Client, user_ids: Vec<u64>) -> Vec<(u64, bool)> {
    match client
        .ok(Command::QueryStatus(im_proto::UserIds { user_ids }))
        .await
    {
        Body::Statuses(found) => found
            .statuses
            .iter()
            .map(|s| (s.user_id, s.online))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn strangers_learn_no_names_or_status_by_id() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let mut clients = users(&gateway, &["ada", "bob", "mal"]).await;
    let [ada, bob, mal] = &mut clients[..] else {
        unreachable!()
    };
    befriend(ada, bob).await;
    let ada_name = ada.session.clone().unwrap().profile.unwrap().name;

    // Counting through ids: only Mal's own profile comes back.
    assert_eq!(profiles(mal, (1..=500).collect()).await, [mal.user_id()]);
    let hidden = mal
        .call(Command::GetProfile(UserId {
            user_id: ada.user_id(),
        }))
        .await;
    let error = hidden.error.expect("an error");
    assert_eq!(
        (error.code, error.message.as_str()),
        (Code::NotFound as i32, "user not found")
    );
    // Nor whether they are online.
    let everyone = vec![ada.user_id(), bob.user_id()];
    assert!(statuses(mal, everyone.clone()).await.is_empty());
    let too_many = mal
        .call(Command::QueryStatus(im_proto::UserIds {
            user_ids: (1..=1001).collect(),
        }))
        .await;
    let error = too_many.error.expect("an error");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");

    // An exact name still finds a user: that is how friends find each other.
    let Body::Profiles(found) = mal
        .ok(Command::SearchUser(im_proto::SearchUserRequest {
            name: ada_name,
        }))
        .await
    else {
        panic!("profiles")
    };
    assert_eq!(ids_of(&found), [ada.user_id()]);

    // Friends see each other.
    assert_eq!(profiles(bob, everyone.clone()).await, everyone);
    assert_eq!(
        statuses(bob, vec![ada.user_id(), mal.user_id()]).await,
        [(ada.user_id(), true)]
    );
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn users_see_those_they_have_to_do_with() {
    // Strangers may write: a message is one of the relationships.
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let mut clients = users(&gateway, &["ada", "cy", "dan", "eve", "mal"]).await;
    let [ada, cy, dan, eve, mal] = &mut clients[..] else {
        unreachable!()
    };
    // Cy shares a group with Ada, Dan asked to be her friend, Eve wrote to her.
    let Body::Group(group) = ada
        .ok(Command::CreateGroup(CreateGroupRequest {
            name: "club".to_owned(),
            description: String::new(),
            join_policy: JoinPolicy::Open as i32,
            member_ids: vec![cy.user_id()],
        }))
        .await
    else {
        panic!("a group")
    };
    dan.ok(Command::AddFriend(im_proto::SendFriendRequestRequest {
        to_user_id: ada.user_id(),
        message: String::new(),
    }))
    .await;
    eve.ok(Command::Send(im_proto::SendRequest {
        to_user_id: ada.user_id(),
        client_msg_id: "hello".to_owned(),
        body: "hello ada".to_owned(),
    }))
    .await;
    let all = vec![cy.user_id(), dan.user_id(), eve.user_id(), mal.user_id()];
    assert_eq!(profiles(ada, all.clone()).await, &all[..3]);
    // Status: friends and co-members only.
    assert_eq!(statuses(ada, all).await, [(cy.user_id(), true)]);

    // The other way round: the co-member sees Ada (and the group's member list by name);
    // asking, or writing, to an id does not reveal whose it is.
    let Body::Members(members) = cy
        .ok(Command::Members(im_proto::MembersRequest {
            group_id: group.group_id,
            after_user_id: 0,
            limit: 0,
        }))
        .await
    else {
        panic!("members")
    };
    let member_ids: Vec<u64> = members.members.iter().map(|m| m.user_id).collect();
    assert_eq!(profiles(cy, member_ids.clone()).await, member_ids);
    for stranger in [dan, eve] {
        assert!(profiles(stranger, vec![ada.user_id()]).await.is_empty());
    }
    // Once Ada writes back, Eve may see her.
    ada.ok(Command::Send(im_proto::SendRequest {
        to_user_id: eve.user_id(),
        client_msg_id: "hi".to_owned(),
        body: "hi eve".to_owned(),
    }))
    .await;
    assert_eq!(profiles(eve, vec![ada.user_id()]).await, [ada.user_id()]);
    gateway.stopped().await;
    cluster.close().await;
}

fn login_as(name: &str, password: &str) -> Command {
    Command::Login(im_proto::client::Login {
        name: name.to_owned(),
        password: password.to_owned(),
        device_id: "phone".to_owned(),
        ..im_proto::client::Login::default()
    })
}

/// Guessing passwords from one address, one account after another: past im-user's
/// per-address limit (20 failures) even the right password of a fresh account is refused
/// from there, with the same error as a wrong one. A trusted balancer's own address is not
/// one client: its connections are judged by what it says.
#[tokio::test]
async fn guessing_from_one_address_is_limited_across_accounts() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let victim = name("victim");
    let mut setup = Client::tcp(gateway.tcp).await;
    setup.register_login(&victim, "phone").await;

    let mut guesser = Client::tcp(gateway.tcp).await;
    let wrong = |reply: &ServerMessage| {
        let error = reply.error.as_ref().unwrap_or_else(|| panic!("{reply:?}"));
        assert_eq!(error.code, Code::Unauthenticated as i32, "{reply:?}");
        error.message.clone()
    };
    let first = wrong(&guesser.call(login_as(&name("nobody"), "guess")).await);
    for i in 1..20 {
        let message = wrong(&guesser.call(login_as(&name("nobody"), "guess")).await);
        assert_eq!(message, first, "failure {i} reads like any other");
    }
    let reply = guesser.call(login_as(&victim, "secret-password")).await;
    assert_eq!(
        wrong(&reply),
        first,
        "the right password from a locked address"
    );

    // The same address behind a trusted balancer that names no client: only the per-name
    // limit applies, and the account logs in.
    let trusting = Settings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..settings()
    };
    let behind = cluster.gateway(&name("gw-"), trusting).await;
    let mut client = Client::tcp(behind.tcp).await;
    let reply = client.call(login_as(&victim, "secret-password")).await;
    assert!(reply.error.is_none(), "{reply:?}");
}
