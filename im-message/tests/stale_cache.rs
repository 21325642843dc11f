//! Cached member and block lists are never written back stale: a read that began before a
//! kick or a block and fills the cache after the change's invalidation would let the kicked
//! member keep receiving the group and the blocked user keep sending for the list's TTL.
//! Each test forces that interleaving (the reader is held between its database read and its
//! fill while the change runs through the real group or user service), then checks the
//! very next message. On both databases, on the in-process bus and on Redis.

mod support;

use std::time::Duration;

use im_common::bus::testing::{FillGate, with_redis};
use im_common::bus::{Bus, ReadFrom, delivery_stream, keys};
use im_common::identity::ServiceIdentity;
use im_common::on_both;
use im_common::proto::{
    Delivery, GroupServiceClient, GroupUser, Route, SendGroupRequest, SendRequest, UserId,
    UserServiceClient,
};
use im_common::store::Sql;
use im_message::Settings;
use mprpc::Code;
use prost::Message as _;
use support::*;

on_both!(
    kick_in_process,
    a_kicked_member_gets_no_later_message_in_process
);
on_both!(
    kick_on_redis,
    a_kicked_member_gets_no_later_message_on_redis
);
on_both!(
    block_in_process,
    a_blocked_user_cannot_send_right_after_in_process
);
on_both!(
    block_on_redis,
    a_blocked_user_cannot_send_right_after_on_redis
);

fn group_service(sql: &Sql, bus: &Bus) -> (mprpc::Server, GroupServiceClient) {
    let groups = im_group::Groups::new(sql.clone(), bus.clone(), im_group::Settings::default());
    let server = im_group::server(groups);
    let client = mprpc::Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(&server);
    (server, GroupServiceClient::new(client))
}

fn user_service(sql: &Sql, bus: &Bus) -> (mprpc::Server, UserServiceClient) {
    let auth = im_user::AuthSettings {
        jwt_secret: "test-secret-of-at-least-thirty-two-bytes".to_owned(),
        ..im_user::AuthSettings::default()
    };
    let users = im_user::Users::new(sql.clone(), bus.clone(), auth).expect("valid settings");
    let server = im_user::server(users);
    let client = mprpc::Client::builder()
        .intercept(ServiceIdentity::new("gateway"))
        .in_process(&server);
    (server, UserServiceClient::new(client))
}

/// The next delivery on `gateway`'s stream.
async fn next_delivery(bus: &Bus, gateway: &str) -> Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let entries = bus
            .streams
            .read(
                delivery_stream(gateway),
                "test".into(),
                ReadFrom::New,
                1,
                Duration::from_millis(200),
            )
            .await
            .unwrap();
        if let Some(entry) = entries.first() {
            let ids = vec![entry.id.clone()];
            bus.streams
                .ack(delivery_stream(gateway), ids)
                .await
                .unwrap();
            return Delivery::decode(entry.payload.clone()).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no delivery");
    }
}

async fn a_kicked_member_gets_no_later_message_in_process(sql: Sql) {
    a_kicked_member_gets_no_later_message(sql, Bus::in_process()).await;
}

async fn a_kicked_member_gets_no_later_message_on_redis(sql: Sql) {
    with_redis(|bus| a_kicked_member_gets_no_later_message(sql, bus)).await;
}

async fn a_kicked_member_gets_no_later_message(sql: Sql, bus: Bus) {
    let owner = add_user(&sql, "owner").await;
    let kicked = add_user(&sql, "kicked").await;
    let stays = add_user(&sql, "stays").await;
    let group = add_group(&sql, owner, &[kicked, stays]).await;
    for user in [owner, kicked, stays] {
        let route = Route {
            user_id: user,
            device_id: "d".into(),
            device_kind: 0,
            gateway_id: "gw".into(),
        };
        bus.routes
            .bind(route, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let (bus, gate) = FillGate::wrap(&bus);
    let (_messages, messages) = service(&sql, &bus, settings());
    let (_groups, groups) = group_service(&sql, &bus);
    let post = |id: &str| SendGroupRequest {
        group_id: group,
        client_msg_id: id.to_owned(),
        body: "hi".to_owned(),
    };

    // The first message's fan-out reads the member list (the kicked member still in it)
    // and is held before it caches the list.
    let mut held = gate.arm(keys::members(group));
    messages
        .send_group_with(&post("m1"), &as_user(owner))
        .await
        .unwrap();
    held.reached().await;
    let kick = GroupUser {
        group_id: group,
        user_id: kicked,
    };
    groups.kick_with(&kick, &as_user(owner)).await.unwrap();
    held.release();
    let first = next_delivery(&bus, "gw").await;
    assert!(first.user_ids.contains(&kicked), "sent before the kick");

    // Sent after the kick was acknowledged: not for the kicked member.
    let second = messages
        .send_group_with(&post("m2"), &as_user(owner))
        .await
        .unwrap();
    let delivery = next_delivery(&bus, "gw").await;
    assert_eq!(delivery.message.as_ref().unwrap().msg_id, second.msg_id);
    assert!(
        !delivery.user_ids.contains(&kicked),
        "the kicked member still receives the group: {:?}",
        delivery.user_ids
    );
    assert!(delivery.user_ids.contains(&stays));
}

async fn a_blocked_user_cannot_send_right_after_in_process(sql: Sql) {
    a_blocked_user_cannot_send_right_after(sql, Bus::in_process()).await;
}

async fn a_blocked_user_cannot_send_right_after_on_redis(sql: Sql) {
    with_redis(|bus| a_blocked_user_cannot_send_right_after(sql, bus)).await;
}

async fn a_blocked_user_cannot_send_right_after(sql: Sql, bus: Bus) {
    let sender = add_user(&sql, "pest").await;
    let victim = add_user(&sql, "victim").await;
    let (bus, gate) = FillGate::wrap(&bus);
    // Not friends-only, so that only the block list stands between the two.
    let open = Settings {
        friends_only: false,
        ..settings()
    };
    let (_messages, messages) = service(&sql, &bus, open);
    let (_users, users) = user_service(&sql, &bus);
    let send = |id: &str| SendRequest {
        to_user_id: victim,
        client_msg_id: id.to_owned(),
        body: "hello".to_owned(),
    };

    // A send checks the victim's block list (empty) and is held before it caches it; the
    // victim blocks the sender meanwhile.
    let mut held = gate.arm(keys::blocked(victim));
    let first = {
        let messages = messages.clone();
        let request = send("b1");
        tokio::spawn(async move { messages.send_with(&request, &as_user(sender)).await })
    };
    held.reached().await;
    let block = UserId { user_id: sender };
    users.block_with(&block, &as_user(victim)).await.unwrap();
    held.release();
    first.await.unwrap().expect("checked before the block");

    let after = messages.send_with(&send("b2"), &as_user(sender)).await;
    assert_eq!(
        code(after),
        Code::PermissionDenied,
        "the block holds at once"
    );
}
