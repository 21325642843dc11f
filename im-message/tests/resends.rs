//! Resends: the idempotency key (sender, client_msg_id) names one message, and a resend
//! that finds its message stored makes sure it is pushed.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use im_common::bus::{Bus, ReadFrom, delivery_stream};
use im_common::ids::ConversationId;
use im_common::on_both;
use im_common::proto::{
    Delivery, MessageKind, RecallRequest, Route, SendGroupRequest, SendRequest,
};
use im_common::store::Sql;
use im_common::store::messages::{MessageStore, NewMessage};
use mprpc::Code;
use prost::Message as _;
use support::*;

fn send(to: u64, id: &str, body: &str) -> SendRequest {
    SendRequest {
        to_user_id: to,
        client_msg_id: id.to_owned(),
        body: body.to_owned(),
    }
}

/// The msg_ids of the entries in `gateway`'s delivery stream, read until `want` is among
/// them or the deadline passes.
async fn pushed(bus: &Bus, gateway: &str, want: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&want) && tokio::time::Instant::now() < deadline {
        let entries = bus
            .streams
            .read(
                delivery_stream(gateway),
                "test".into(),
                ReadFrom::New,
                100,
                Duration::from_millis(100),
            )
            .await
            .unwrap();
        for entry in entries {
            let delivery = Delivery::decode(entry.payload).unwrap();
            seen.push(delivery.message.unwrap().msg_id);
        }
    }
    seen
}

/// A message committed and never pushed (the service stopped between the two): the
/// sender's resend finds it stored, gets its ack, and the recipient gets the push.
async fn a_resend_pushes_a_stored_message(sql: Sql) {
    let a = add_user(&sql, "ada").await;
    let b = add_user(&sql, "bob").await;
    befriend(&sql, a, b).await;
    let bus = Bus::in_process();
    let route = Route {
        user_id: b,
        device_id: "phone".into(),
        device_kind: 0,
        gateway_id: "gw-resend".into(),
    };
    bus.routes
        .bind(route, Duration::from_secs(60))
        .await
        .unwrap();
    // Stored as the first attempt's commit left it, with no push.
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    let next_id = || NEXT.fetch_add(1, Ordering::Relaxed);
    let lost = NewMessage {
        conversation: ConversationId::direct(a, b),
        sender: a,
        client_msg_id: "lost-ack".into(),
        kind: MessageKind::Text,
        body: "hello".into(),
        ref_msg_id: 0,
    };
    let stored = sql.commit(&[lost], &next_id).await.unwrap();
    let msg_id = stored[0].message().msg_id;

    let (_server, client) = service(&sql, &bus, settings());
    let ack = client
        .send_with(&send(b, "lost-ack", "hello"), &as_user(a))
        .await
        .unwrap();
    assert!(ack.duplicate);
    assert_eq!(ack.msg_id, msg_id);
    assert_eq!(pushed(&bus, "gw-resend", msg_id).await, [msg_id]);
}
on_both!(resend_push, a_resend_pushes_a_stored_message);

/// A client_msg_id used for one message is refused for any other: another conversation,
/// a group, a recall; never answered with the first message's ack.
async fn a_reused_client_msg_id_is_refused_elsewhere(sql: Sql) {
    let a = add_user(&sql, "ada").await;
    let b = add_user(&sql, "bob").await;
    let c = add_user(&sql, "cy").await;
    let stranger = add_user(&sql, "dan").await;
    befriend(&sql, a, b).await;
    befriend(&sql, a, c).await;
    let group = add_group(&sql, a, &[b]).await;
    let bus = Bus::in_process();
    let (_server, client) = service(&sql, &bus, settings());
    let me = as_user(a);

    let first = client
        .send_with(&send(b, "k1", "to bob"), &me)
        .await
        .unwrap();
    let again = client
        .send_with(&send(b, "k1", "to bob"), &me)
        .await
        .unwrap();
    assert_eq!((again.msg_id, again.duplicate), (first.msg_id, true));

    let to_cy = client.send_with(&send(c, "k1", "to cy"), &me).await;
    assert_eq!(code(to_cy), Code::AlreadyExists);
    let to_group = SendGroupRequest {
        group_id: group,
        client_msg_id: "k1".into(),
        body: "to the group".into(),
    };
    assert_eq!(
        code(client.send_group_with(&to_group, &me).await),
        Code::AlreadyExists
    );
    // A send that is refused on its own (not friends) must not be answered with the
    // earlier message's ack either.
    let refused = client.send_with(&send(stranger, "k1", "hi"), &me).await;
    assert_eq!(code(refused), Code::AlreadyExists);
    let recall = RecallRequest {
        msg_id: first.msg_id,
        client_msg_id: "k1".into(),
    };
    assert_eq!(
        code(client.recall_with(&recall, &me).await),
        Code::AlreadyExists
    );

    // Nothing of the others was stored; the first message is whole.
    for conv in [
        ConversationId::direct(a, c).to_string(),
        format!("g:{group}"),
        ConversationId::direct(a, stranger).to_string(),
    ] {
        assert_eq!(message_rows(&sql, &conv).await, 0, "{conv}");
    }
    assert_eq!(message_rows(&sql, &first.conversation_id).await, 1);
}
on_both!(reused_key, a_reused_client_msg_id_is_refused_elsewhere);
