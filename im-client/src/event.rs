//! What the gateway tells a client without being asked, in the order to show it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use im_proto::client::{ReadReceipt, TypingNotice};
use im_proto::{ChatMessage, FriendRequest, MessageKind, PresenceChanged};
use tokio::sync::mpsc;

/// One event. Conversation entries (messages, recalls, edits) come in per-conversation
/// seq order, each once; the client's own acknowledged sends are among them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The first connection is up.
    Connected,
    /// The connection is back after a loss; `resumed` when the session was resumed (and
    /// the missed entries are being synced).
    Reconnected {
        /// Whether a session was resumed.
        resumed: bool,
    },
    /// The connection was lost; a reconnect follows.
    Disconnected {
        /// Why, for people.
        reason: String,
    },
    /// A message (or the client's own, once acknowledged).
    Message(ChatMessage),
    /// A recall: `ref_msg_id` names the message taken back.
    Recalled(ChatMessage),
    /// An edit: `ref_msg_id` names the message, `body` is its new text.
    Edited(ChatMessage),
    /// Someone read a conversation up to a seq.
    ReadReceipt(ReadReceipt),
    /// Someone is typing.
    Typing(TypingNotice),
    /// A friend came online or went offline.
    Presence(PresenceChanged),
    /// Someone (`from_user_id`) asked to be this user's friend: answer with
    /// [`Client::respond_friend`](crate::Client::respond_friend). Only devices connected at
    /// the time hear it; [`Client::list_friend_requests`](crate::Client::list_friend_requests) lists
    /// the rest.
    FriendRequested(FriendRequest),
    /// A friend request between this user and another was answered (`state` says how):
    /// when accepted the two are friends now, on every device of both.
    FriendResponded(FriendRequest),
    /// The session ended (logged out elsewhere, or it could not be resumed): log in again.
    Kicked {
        /// Why, for people.
        reason: String,
    },
}

impl Event {
    /// The event for a conversation entry, by its kind.
    pub(crate) fn entry(entry: ChatMessage) -> Event {
        match entry.kind() {
            MessageKind::Recall => Event::Recalled(entry),
            MessageKind::Edit => Event::Edited(entry),
            MessageKind::Text | MessageKind::Unspecified => Event::Message(entry),
        }
    }
}

/// The client's events, as a [`Stream`] or with [`Events::recv`]. It ends when every
/// [`Client`](crate::Client) handle is dropped.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
