//! Ephemeral events from pub/sub: this gateway's channel (kicks, typing, read receipts and
//! friend requests for its users) and the broadcast channel (presence changes).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use im_common::bus::channels;
use im_proto::client::server_message::Body;
use im_proto::client::{Kicked, ReadReceipt, TypingNotice};
use im_proto::{Event, FriendNotice, FriendRequestState, PresenceChanged, event};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Shared;
use crate::wire::Encoded;

/// Subscribes to both channels.
///
/// # Errors
/// When the bus refuses a subscription.
pub(crate) async fn subscribe(
    shared: &Shared,
) -> Result<(mpsc::Receiver<Bytes>, mpsc::Receiver<Bytes>), im_common::StoreError> {
    let own = shared
        .bus
        .pubsub
        .subscribe(channels::gateway(&shared.id))
        .await?;
    let all = shared
        .bus
        .pubsub
        .subscribe(channels::BROADCAST.to_owned())
        .await?;
    Ok((own, all))
}

/// Handles events until `stop`, subscribing again when a subscription ends.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut subscriptions: (mpsc::Receiver<Bytes>, mpsc::Receiver<Bytes>),
    stop: CancellationToken,
) {
    loop {
        let (own, all) = &mut subscriptions;
        let payload = tokio::select! {
            () = stop.cancelled() => return,
            payload = own.recv() => payload,
            payload = all.recv() => payload,
        };
        match payload {
            Some(payload) => on_event(&shared, &payload),
            None => loop {
                warn!("event subscription ended; subscribing again");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match subscribe(&shared).await {
                    Ok(fresh) => {
                        subscriptions = fresh;
                        break;
                    }
                    Err(err) => warn!(cause = %err, "cannot subscribe to events"),
                }
            },
        }
    }
}

fn on_event(shared: &Shared, payload: &[u8]) {
    let Ok(Event { event: Some(event) }) = Event::decode(payload) else {
        debug!("undecodable event ignored");
        return;
    };
    match event {
        event::Event::Kick(kick) => {
            let kicked = Encoded::push(Body::Kicked(Kicked {
                reason: if kick.reason.is_empty() {
                    "the session ended".to_owned()
                } else {
                    kick.reason
                },
            }));
            for conn in shared.registry.conns(kick.user_id) {
                if conn.session().is_some_and(|s| s.session == kick.session_id) {
                    conn.close_after(kicked.clone());
                }
            }
        }
        event::Event::Typing(typing) => {
            let push = Encoded::push(Body::Typing(TypingNotice {
                conversation_id: typing.conversation_id,
                user_id: typing.user_id,
            }));
            push_to(shared, &typing.to_user_ids, &push);
        }
        event::Event::Read(read) => {
            let push = Encoded::push(Body::ReadReceipt(ReadReceipt {
                conversation_id: read.conversation_id,
                user_id: read.user_id,
                read_seq: read.read_seq,
            }));
            push_to(shared, &read.to_user_ids, &push);
        }
        event::Event::Friend(notice) => on_friend(shared, notice),
        event::Event::Presence(presence) => {
            let watchers = shared.registry.watchers(presence.user_id);
            if watchers.is_empty() {
                return;
            }
            let push = Encoded::push(Body::Presence(PresenceChanged {
                to_user_ids: Vec::new(),
                ..presence
            }));
            push_to(shared, &watchers, &push);
        }
    }
}

/// A friend request made (for its target) or answered (for both users); an accepted one
/// also enters the friends index, so that the two see each other's presence from now.
fn on_friend(shared: &Shared, notice: FriendNotice) {
    let Some(request) = notice.request else {
        return;
    };
    let body = if request.state == FriendRequestState::Pending as i32 {
        Body::FriendRequested(request)
    } else {
        if request.state == FriendRequestState::Accepted as i32 {
            shared
                .registry
                .befriend(request.from_user_id, request.to_user_id);
        }
        Body::FriendResponded(request)
    };
    push_to(shared, &notice.to_user_ids, &Encoded::push(body));
}

/// Pushes `push` to every connection of `users` here (no delivery token: events are
/// best effort).
fn push_to(shared: &Shared, users: &[u64], push: &Arc<Encoded>) {
    for &user in users {
        shared.registry.each(user, |conn| {
            conn.push(push.clone(), None, shared.settings.max_queued);
        });
    }
}
