//! Ephemeral events for the gateways holding some users' connections (kicks, friend
//! requests): the users' routes are looked up in one query, and each gateway that holds
//! any of them gets one event on its pub/sub channel, naming the users it holds.
//!
//! Best effort: a user whose gateway misses an event (no route yet, Redis down) learns the
//! same from the database (a revoked session at the next check, requests by listing them).

use bytes::Bytes;
use im_common::bus::{channels, fanout};
use im_common::proto::{Event, FriendNotice, FriendRequest, FriendRequestState, event};
use prost::Message as _;
use tracing::warn;

use crate::state::Users;

/// Publishes the event `make` builds for each gateway holding some of `to`, with the users
/// that gateway holds.
pub(crate) async fn publish(
    users: &Users,
    to: Vec<u64>,
    what: &'static str,
    make: impl Fn(Vec<u64>) -> event::Event,
) {
    let mut to = to;
    to.sort_unstable();
    to.dedup();
    let routes = match users.bus.routes.query(to.clone()).await {
        Ok(routes) => routes,
        Err(err) => {
            warn!(cause = %err, what, "event not published: routes unknown");
            return;
        }
    };
    let gateways_of = fanout::gateways_by_user(routes);
    for (gateway, held) in fanout::by_gateway(to.iter().copied(), &gateways_of) {
        let payload = Bytes::from(
            Event {
                event: Some(make(held)),
            }
            .encode_to_vec(),
        );
        if let Err(err) = users
            .bus
            .pubsub
            .publish(channels::gateway(gateway), payload)
            .await
        {
            warn!(cause = %err, what, gateway, "event not published");
        }
    }
}

/// Tells the users concerned about `request`: its target while it is pending, both users
/// once it is answered.
pub(crate) async fn friend_request(users: &Users, request: &FriendRequest) {
    let to = if request.state == FriendRequestState::Pending as i32 {
        vec![request.to_user_id]
    } else {
        vec![request.from_user_id, request.to_user_id]
    };
    publish(users, to, "friend request", |to_user_ids| {
        event::Event::Friend(FriendNotice {
            request: Some(request.clone()),
            to_user_ids,
        })
    })
    .await;
}
