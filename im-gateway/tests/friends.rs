//! Friend requests pushed through the gateways: the target's devices hear a request, both
//! users hear its answer, on one gateway or another; a request to someone offline waits to
//! be listed.

mod support;

use im_common::bus::Bus;
use im_proto::client::Ping;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::{
    FriendRequest, FriendRequestState, ListFriendRequestsRequest, RegisterRequest,
    RespondFriendRequestRequest, SendFriendRequestRequest,
};
use support::*;

async fn ask(from: &mut Client, to: u64, message: &str) -> FriendRequest {
    let Body::FriendRequest(request) = from
        .ok(Command::AddFriend(SendFriendRequestRequest {
            to_user_id: to,
            message: message.to_owned(),
        }))
        .await
    else {
        panic!("a friend request")
    };
    request
}

async fn answer(client: &mut Client, request: &FriendRequest, accept: bool) {
    client
        .ok(Command::RespondFriend(RespondFriendRequestRequest {
            request_id: request.request_id,
            accept,
        }))
        .await;
}

async fn requested(client: &mut Client) -> FriendRequest {
    match client
        .push_where(|b| matches!(b, Body::FriendRequested(_)))
        .await
    {
        Body::FriendRequested(request) => request,
        _ => unreachable!(),
    }
}

async fn responded(client: &mut Client) -> FriendRequest {
    match client
        .push_where(|b| matches!(b, Body::FriendResponded(_)))
        .await
    {
        Body::FriendResponded(request) => request,
        _ => unreachable!(),
    }
}

/// Whether `client` holds a friend push, once a ping's reply has come back after whatever
/// was on its way.
async fn heard_of_friends(client: &mut Client) -> bool {
    client.ok(Command::Ping(Ping {})).await;
    client.pending_pushes().iter().any(|m| {
        matches!(
            m.body,
            Some(Body::FriendRequested(_) | Body::FriendResponded(_))
        )
    })
}

async fn requests_and_answers_are_pushed(bus: Bus) {
    let cluster = Cluster::start(bus, true).await;
    let here = cluster.gateway(&name("gw-"), settings()).await;
    let there = cluster.gateway(&name("gw-"), settings()).await;
    let (ada, bob, cy) = (name("ada"), name("bob"), name("cy"));
    let mut ada1 = Client::tcp(here.tcp).await;
    ada1.register_login(&ada, "phone").await;
    let mut bob1 = Client::tcp(here.tcp).await;
    bob1.register_login(&bob, "phone").await;
    let mut bob2 = Client::ws(there.ws, true).await;
    bob2.login(&bob, "web").await;
    let mut cy1 = Client::ws(there.ws, false).await;
    cy1.register_login(&cy, "laptop").await;

    // Both of bob's devices hear ada's request, on either gateway; ada's own does not.
    let sent = ask(&mut ada1, bob1.user_id(), "it's ada").await;
    for device in [&mut bob1, &mut bob2] {
        let pushed = requested(device).await;
        assert_eq!(pushed, sent);
        assert_eq!(
            (pushed.from_user_id, pushed.message.as_str(), pushed.state()),
            (ada1.user_id(), "it's ada", FriendRequestState::Pending)
        );
    }
    assert!(!heard_of_friends(&mut ada1).await);

    // bob accepts on one device: ada hears it, and so does bob's other device.
    answer(&mut bob2, &sent, true).await;
    for device in [&mut ada1, &mut bob1] {
        let pushed = responded(device).await;
        assert_eq!(
            (pushed.request_id, pushed.state()),
            (sent.request_id, FriendRequestState::Accepted)
        );
    }
    // The answering device too (it has the reply as well).
    assert_eq!(responded(&mut bob2).await.request_id, sent.request_id);

    // cy's request is declined: cy hears so.
    let declined = ask(&mut cy1, bob1.user_id(), "").await;
    assert_eq!(requested(&mut bob1).await.from_user_id, cy1.user_id());
    answer(&mut bob1, &declined, false).await;
    let pushed = responded(&mut cy1).await;
    assert_eq!(
        (pushed.request_id, pushed.state()),
        (declined.request_id, FriendRequestState::Rejected)
    );
    assert_eq!(responded(&mut bob2).await.request_id, declined.request_id);

    // Asking someone who asked first befriends the two at once: both hear the acceptance.
    let first = ask(&mut cy1, ada1.user_id(), "").await;
    assert_eq!(requested(&mut ada1).await, first);
    ask(&mut ada1, cy1.user_id(), "").await;
    for device in [&mut ada1, &mut cy1] {
        let pushed = responded(device).await;
        assert_eq!(
            (pushed.request_id, pushed.state()),
            (first.request_id, FriendRequestState::Accepted)
        );
    }
    here.stopped().await;
    there.stopped().await;
    cluster.close().await;
}

async fn a_request_to_someone_offline_is_listed_later(bus: Bus) {
    let cluster = Cluster::start(bus, true).await;
    let gateway = cluster.gateway(&name("gw-"), settings()).await;
    let (ada, dan) = (name("ada"), name("dan"));
    let mut ada1 = Client::tcp(gateway.tcp).await;
    ada1.register_login(&ada, "phone").await;
    // dan registers and is not logged in anywhere: no route, no push, no error.
    let mut dan1 = Client::tcp(gateway.tcp).await;
    let Body::Profile(profile) = dan1
        .ok(Command::Register(RegisterRequest {
            name: dan.clone(),
            password: "secret-password".to_owned(),
            nickname: String::new(),
        }))
        .await
    else {
        panic!("a profile")
    };
    let dan_id = profile.user_id;
    let sent = ask(&mut ada1, dan_id, "hi dan").await;

    dan1.login(&dan, "phone").await;
    let Body::FriendRequests(listed) = dan1
        .ok(Command::ListFriendRequests(ListFriendRequestsRequest {
            outgoing: false,
        }))
        .await
    else {
        panic!("friend requests")
    };
    assert_eq!(listed.requests, vec![sent]);
    assert!(!heard_of_friends(&mut dan1).await);
    gateway.stopped().await;
    cluster.close().await;
}

im_common::on_every_bus!(
    requests_and_answers_are_pushed,
    a_request_to_someone_offline_is_listed_later
);
