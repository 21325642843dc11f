//! Events as lines on the screen.

use im_client::Event;
use im_client::im_proto::{ChatMessage, FriendRequestState};

use super::App;
use crate::view::{Route, clock, message_line, say};

impl App {
    /// Prints one event.
    pub(crate) async fn show(&mut self, event: Event) {
        match event {
            Event::Connected => {
                say("-- connected; /register or /login (/help lists every command)")
            }
            Event::Disconnected { reason } => {
                say(&format!("-- connection lost ({reason}); reconnecting…"))
            }
            Event::Reconnected { resumed: true } => say("-- reconnected; catching up"),
            Event::Reconnected { resumed: false } => say("-- reconnected"),
            Event::Kicked { reason } => {
                (self.me, self.current) = (None, None);
                say(&format!("-- session ended ({reason}); /login to go on"));
            }
            Event::Presence(p) => {
                let who = self.name_of(p.user_id).await;
                let state = if p.online { "online" } else { "offline" };
                say(&format!("{} {who} is {state}", clock(p.at_ms)));
            }
            Event::Typing(t) => {
                let who = self.name_of(t.user_id).await;
                say(&format!("{} {who} is typing…", clock(0)));
            }
            Event::ReadReceipt(r) if Some(r.user_id) != self.me.as_ref().map(|m| m.0) => {
                let who = self.name_of(r.user_id).await;
                say(&format!("{} {who} read up to seq {}", clock(0), r.read_seq));
            }
            Event::FriendRequested(request) => {
                let text = self.request_text(&request).await;
                say(&format!("-- friend request {text}"));
            }
            // Only the requester's devices say it: the answering one said so already.
            Event::FriendResponded(request) if Some(request.from_user_id) == self.me_id() => {
                let who = self.name_of(request.to_user_id).await;
                say(&if request.state() == FriendRequestState::Accepted {
                    format!("-- {who} accepted your friend request; /chat {who} to talk")
                } else {
                    format!("-- {who} declined your friend request")
                });
            }
            other => self.show_entry(other).await,
        }
    }

    fn me_id(&self) -> Option<u64> {
        self.me.as_ref().map(|m| m.0)
    }

    pub(super) async fn show_entry(&mut self, event: Event) {
        let me = self.me.as_ref().map_or(0, |m| m.0);
        match event {
            Event::Message(message) => {
                let (from, to) = self.ends(&message, me).await;
                let route = Route {
                    from: &from,
                    to: &to,
                };
                let own = message.sender_id == me;
                let mut line = message_line(&message, &route, own);
                let current = self.conversation().ok().map(|(id, _)| id);
                if !own && current.as_deref() != Some(message.conversation_id.as_str()) {
                    // Not where typed lines go: say how to answer there.
                    line.push_str(&match message.conversation_id.strip_prefix("g:") {
                        Some(group) => format!("  (/g {group} to answer)"),
                        None => format!("  (/chat {from} to answer)"),
                    });
                }
                say(&line);
            }
            Event::Recalled(entry) => {
                let who = self.who(entry.sender_id, me).await;
                say(&format!(
                    "{} {who} recalled message #{}",
                    clock(entry.server_time_ms),
                    entry.ref_msg_id
                ));
            }
            Event::Edited(entry) => {
                let who = self.who(entry.sender_id, me).await;
                let time = clock(entry.server_time_ms);
                say(&format!(
                    "{time} {who} edited message #{}: {}",
                    entry.ref_msg_id, entry.body
                ));
            }
            _ => {}
        }
    }

    /// Sender and receiver of a message as the line names them.
    async fn ends(&mut self, message: &ChatMessage, me: u64) -> (String, String) {
        let from = self.who(message.sender_id, me).await;
        if let Some(group) = message.conversation_id.strip_prefix("g:") {
            let id = group.parse().unwrap_or_default();
            return (from, format!("#{}", self.group_name(id).await));
        }
        let peer = peer_of(&message.conversation_id, me);
        let to = if message.sender_id == me {
            self.name_of(peer).await
        } else {
            "you".into()
        };
        (from, to)
    }

    async fn who(&mut self, user_id: u64, me: u64) -> String {
        if user_id == me {
            "you".into()
        } else {
            self.name_of(user_id).await
        }
    }
}

/// The other user of a `d:<low>:<high>` conversation.
fn peer_of(conversation_id: &str, me: u64) -> u64 {
    let mut ids = conversation_id
        .strip_prefix("d:")
        .unwrap_or_default()
        .split(':');
    let low = ids.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let high = ids.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if low == me { high } else { low }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_direct_conversation() {
        assert_eq!(peer_of("d:3:9", 3), 9);
        assert_eq!(peer_of("d:3:9", 9), 3);
        assert_eq!(peer_of("g:4", 1), 0);
        assert_eq!(peer_of("d:x", 1), 0);
    }
}
