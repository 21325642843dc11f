//! Users chatting through the gateway: login, send, ack, push, sync, groups, multi-device,
//! kicks, resume, typing, read receipts (and the peer's cursor in the conversation list) and
//! GoAway; over TCP and WebSocket.

mod support;

use im_common::bus::Bus;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Cursor, Login, Logout, Ping, Resume, Typing};
use im_proto::{
    CreateGroupRequest, Empty, MarkReadRequest, RecallRequest, SendGroupRequest, SendRequest,
    SyncRequest,
};
use support::*;

fn send(to: u64, id: &str, body: &str) -> Command {
    Command::Send(SendRequest {
        to_user_id: to,
        client_msg_id: id.to_owned(),
        body: body.to_owned(),
    })
}

async fn one_to_one(bus: Bus) {
    let cluster = Cluster::start(bus, true).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let (ada, bob) = (name("ada"), name("bob"));
    let mut ada1 = Client::tcp(gateway.tcp).await;
    ada1.register_login(&ada, "phone").await;
    let mut ada2 = Client::tcp(gateway.tcp).await;
    ada2.login(&ada, "laptop").await;
    let mut bob1 = Client::ws(gateway.ws, false).await;
    bob1.register_login(&bob, "web").await;
    befriend(&mut ada1, &mut bob1).await;

    let Body::Ack(ack) = ada1.ok(send(bob1.user_id(), "m1", "hello bob")).await else {
        panic!("an ack")
    };
    assert_eq!(ack.seq, 1);
    let is_message = |b: &Body| matches!(b, Body::Message(_));
    for client in [&mut bob1, &mut ada2] {
        let Body::Message(message) = client.push_where(is_message).await else {
            unreachable!()
        };
        assert_eq!(message.body, "hello bob");
        assert_eq!(message.msg_id, ack.msg_id);
    }
    // The sending device has the ack and no push (the others have theirs by now).
    assert!(matches!(
        ada1.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));
    ada1.ok(Command::Ping(Ping {})).await;
    assert!(
        !ada1
            .pending_pushes()
            .iter()
            .any(|m| m.body.as_ref().is_some_and(is_message)),
        "the sending device got its own message"
    );

    let Body::Synced(synced) = bob1
        .ok(Command::Sync(SyncRequest {
            conversation_id: ack.conversation_id.clone(),
            after_seq: 0,
            limit: 0,
        }))
        .await
    else {
        panic!("a sync reply")
    };
    assert_eq!(synced.messages.len(), 1);
    assert_eq!(synced.last_seq, 1);

    ada2.ok(Command::Recall(RecallRequest {
        msg_id: ack.msg_id,
        client_msg_id: "r1".to_owned(),
    }))
    .await;
    let Body::Recalled(recalled) = bob1.push_where(|b| matches!(b, Body::Recalled(_))).await else {
        unreachable!()
    };
    assert_eq!(recalled.event.unwrap().ref_msg_id, ack.msg_id);
    // Every entry of the delivery stream is acknowledged once written.
    let deadline = tokio::time::Instant::now() + WAIT;
    while unacknowledged(&cluster.bus, &gateway.id).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "entries stay unacknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gateway.stopped().await;
    cluster.close().await;
}

async fn group_fan_out(bus: Bus) {
    let cluster = Cluster::start(bus, false).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let mut members = Vec::new();
    for i in 0..4 {
        let mut client = if i % 2 == 0 {
            Client::tcp(gateway.tcp).await
        } else {
            Client::ws(gateway.ws, i == 3).await
        };
        client.register_login(&name("member"), "d").await;
        members.push(client);
    }
    let ids = members[1..].iter().map(Client::user_id).collect();
    let Body::Group(group) = members[0]
        .ok(Command::CreateGroup(CreateGroupRequest {
            name: name("group"),
            member_ids: ids,
            ..CreateGroupRequest::default()
        }))
        .await
    else {
        panic!("a group")
    };
    members[2]
        .ok(Command::SendGroup(SendGroupRequest {
            group_id: group.group_id,
            client_msg_id: "g1".to_owned(),
            body: "hi all".to_owned(),
        }))
        .await;
    for (i, member) in members.iter_mut().enumerate() {
        if i == 2 {
            continue;
        }
        let Body::Message(message) = member.push_where(|b| matches!(b, Body::Message(_))).await
        else {
            unreachable!()
        };
        assert_eq!(message.body, "hi all");
    }
    gateway.stopped().await;
    cluster.close().await;
}

/// Entries an earlier run of a gateway read and did not acknowledge (it died) are taken
/// again by the next run with the same id and acknowledged (their connections died with
/// that run; its clients sync on reconnect), not left pending in the stream for ever.
async fn a_restarted_gateway_acknowledges_what_its_last_run_left(bus: Bus) {
    let cluster = Cluster::start(bus, false).await;
    let id = name("gw-restart-");
    let stream = im_common::bus::delivery_stream(&id);
    let delivery = im_proto::Delivery {
        user_ids: vec![1],
        message: Some(im_proto::ChatMessage {
            msg_id: 1,
            conversation_id: "d:1:2".to_owned(),
            seq: 1,
            sender_id: 2,
            body: "left over".to_owned(),
            ..im_proto::ChatMessage::default()
        }),
        sender_id: 2,
        sender_device_id: "d".to_owned(),
    };
    let payload = prost::Message::encode_to_vec(&delivery);
    cluster
        .bus
        .streams
        .push(stream.clone(), payload.into())
        .await
        .unwrap();
    let read = cluster
        .bus
        .streams
        .read(
            stream,
            id.clone(),
            im_common::bus::ReadFrom::New,
            10,
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(unacknowledged(&cluster.bus, &id).await, 1);

    let gateway = cluster.gateway(&id, settings()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while unacknowledged(&cluster.bus, &id).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entry stays unacknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gateway.stopped().await;
    cluster.close().await;
}

im_common::on_every_bus!(
    one_to_one,
    group_fan_out,
    a_restarted_gateway_acknowledges_what_its_last_run_left
);

#[tokio::test]
async fn json_text_frames_get_json_replies() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway("gw-json", settings()).await;
    let mut raw = Client::ws(gateway.ws, true).await;
    raw.send_text(r#"{"id":"7","ping":{}}"#).await;
    let pong = raw.next().await.unwrap();
    assert_eq!(pong.id, 7);
    assert!(matches!(pong.body, Some(Body::Pong(_))));

    let mut ada = Client::ws(gateway.ws, true).await;
    ada.register_login(&name("ada"), "web").await;
    let mut bob = Client::tcp(gateway.tcp).await;
    bob.register_login(&name("bob"), "cli").await;
    bob.ok(send(ada.user_id(), "x", "over json")).await;
    let Body::Message(message) = ada.push_where(|b| matches!(b, Body::Message(_))).await else {
        unreachable!()
    };
    assert_eq!(message.body, "over json");
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn logout_closes_every_connection_of_the_session() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway("gw-logout", settings()).await;
    let mut first = Client::tcp(gateway.tcp).await;
    let session = first.register_login(&name("ada"), "phone").await;
    let mut second = Client::ws(gateway.ws, false).await;
    let Body::Session(again) = second
        .ok(Command::Login(Login {
            token: session.token.clone(),
            ..Login::default()
        }))
        .await
    else {
        panic!("a session")
    };
    assert_eq!(again.session_id, session.session_id);
    assert_eq!(again.device_id, "phone");

    assert!(matches!(
        first.ok(Command::Logout(Logout {})).await,
        Body::Ok(_)
    ));
    first.closed().await;
    let seen = second.closed().await;
    assert!(
        seen.iter().any(|m| matches!(m.body, Some(Body::Kicked(_)))),
        "{seen:?}"
    );
    let mut third = Client::tcp(gateway.tcp).await;
    let reply = third
        .call(Command::Login(Login {
            token: session.token,
            ..Login::default()
        }))
        .await;
    assert_eq!(reply.error.unwrap().code, Code::Unauthenticated as i32);
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn resume_lists_the_conversations_behind() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway("gw-resume", settings()).await;
    let mut ada = Client::tcp(gateway.tcp).await;
    let session = ada.register_login(&name("ada"), "phone").await;
    let mut bob = Client::tcp(gateway.tcp).await;
    bob.register_login(&name("bob"), "phone").await;
    let mut cy = Client::tcp(gateway.tcp).await;
    cy.register_login(&name("cy"), "phone").await;
    let Body::Ack(with_bob) = bob.ok(send(ada.user_id(), "1", "one")).await else {
        panic!()
    };
    bob.ok(send(ada.user_id(), "2", "two")).await;
    let Body::Ack(with_cy) = cy.ok(send(ada.user_id(), "3", "three")).await else {
        panic!()
    };

    let mut again = Client::tcp(gateway.tcp).await;
    let Body::Resumed(resumed) = again
        .ok(Command::Resume(Resume {
            token: session.token,
            cursors: vec![
                Cursor {
                    conversation_id: with_bob.conversation_id.clone(),
                    last_seq: 1,
                },
                Cursor {
                    conversation_id: with_cy.conversation_id.clone(),
                    last_seq: 1,
                },
            ],
            ..Resume::default()
        }))
        .await
    else {
        panic!("resumed")
    };
    assert_eq!(resumed.session.unwrap().user_id, ada.user_id());
    assert_eq!(resumed.behind.len(), 1, "{:?}", resumed.behind);
    assert_eq!(resumed.behind[0].conversation_id, with_bob.conversation_id);
    assert_eq!(
        (resumed.behind[0].after_seq, resumed.behind[0].last_seq),
        (1, 2)
    );
    assert!(matches!(
        again.ok(Command::ListConversations(Empty {})).await,
        Body::Conversations(_)
    ));
    gateway.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn typing_and_read_receipts_reach_the_peer_on_another_gateway() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let here = cluster.gateway("gw-here", settings()).await;
    let there = cluster.gateway("gw-there", settings()).await;
    let mut ada = Client::tcp(here.tcp).await;
    ada.register_login(&name("ada"), "phone").await;
    let mut ada_web = Client::ws(there.ws, true).await;
    ada_web
        .login(&ada.session.clone().unwrap().profile.unwrap().name, "web")
        .await;
    let mut bob = Client::tcp(there.tcp).await;
    bob.register_login(&name("bob"), "phone").await;
    let Body::Ack(ack) = bob.ok(send(ada.user_id(), "1", "hi")).await else {
        panic!()
    };

    ada.ok(Command::Typing(Typing {
        conversation_id: ack.conversation_id.clone(),
    }))
    .await;
    let Body::Typing(typing) = bob.push_where(|b| matches!(b, Body::Typing(_))).await else {
        unreachable!()
    };
    assert_eq!(typing.user_id, ada.user_id());

    ada.ok(Command::MarkRead(MarkReadRequest {
        conversation_id: ack.conversation_id.clone(),
        seq: 1,
    }))
    .await;
    for client in [&mut bob, &mut ada_web] {
        let Body::ReadReceipt(receipt) = client
            .push_where(|b| matches!(b, Body::ReadReceipt(_)))
            .await
        else {
            unreachable!()
        };
        assert_eq!((receipt.user_id, receipt.read_seq), (ada.user_id(), 1));
    }
    // A client that just connected learns the same from its conversation list.
    let mut bob_again = Client::ws(here.ws, true).await;
    bob_again
        .login(&bob.session.clone().unwrap().profile.unwrap().name, "web")
        .await;
    let Body::Conversations(listed) = bob_again.ok(Command::ListConversations(Empty {})).await
    else {
        panic!("conversations")
    };
    let conversation = &listed.conversations[0];
    assert_eq!(conversation.conversation_id, ack.conversation_id);
    assert_eq!((conversation.read_seq, conversation.peer_read_seq), (0, 1));
    here.stopped().await;
    there.stopped().await;
    cluster.close().await;
}

#[tokio::test]
async fn shutdown_sends_go_away_and_closes() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let mut gateway = cluster.gateway("gw-bye", settings()).await;
    let mut ada = Client::tcp(gateway.tcp).await;
    ada.register_login(&name("ada"), "phone").await;
    let mut anonymous = Client::ws(gateway.ws, true).await;
    anonymous.ok(Command::Ping(Ping {})).await;
    gateway.shutdown();
    for client in [&mut ada, &mut anonymous] {
        let seen = client.closed().await;
        assert!(
            seen.iter().any(|m| matches!(m.body, Some(Body::GoAway(_)))),
            "{seen:?}"
        );
    }
    gateway.stopped().await;
    let routes = cluster.bus.routes.query(vec![ada.user_id()]).await.unwrap();
    assert!(routes.is_empty(), "routes unbound: {routes:?}");
    cluster.close().await;
}
