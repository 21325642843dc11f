//! What a user may ask about others, attacked through the gateway with a real session:
//! typing where the user may not write, and (docs/client-protocol.md, "What others see")
//! profiles and presence of strangers.

mod support;

use im_common::bus::Bus;
use im_common::ids::ConversationId;
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
