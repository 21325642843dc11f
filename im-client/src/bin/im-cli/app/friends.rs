//! Users and friends: search, requests, the friend list, blocks, and opening a chat.

use im_client::im_proto::{FriendRequest, FriendRequestState};

use super::{App, Target, text};
use crate::view::say;

impl App {
    pub(super) async fn users(&mut self, name: &str) -> Result<(), String> {
        let found = self.client.search_user(name).await.map_err(text)?.profiles;
        if found.is_empty() {
            say(&format!("-- no user named {name}"));
        }
        for profile in found {
            self.learn(profile.user_id, &profile.name);
            say(&format!(
                "  {} (id {}) {}",
                profile.name, profile.user_id, profile.nickname
            ));
        }
        Ok(())
    }

    pub(super) async fn add(&mut self, name: &str) -> Result<(), String> {
        let id = self.resolve(name).await?;
        let request = self.client.add_friend(id, "").await.map_err(text)?;
        say(&format!(
            "-- friend request #{} sent to {name}",
            request.request_id
        ));
        Ok(())
    }

    pub(super) async fn requests(&mut self) -> Result<(), String> {
        let requests = self
            .client
            .list_friend_requests(false)
            .await
            .map_err(text)?
            .requests;
        let pending: Vec<_> = requests
            .into_iter()
            .filter(|r| r.state() == FriendRequestState::Pending)
            .collect();
        if pending.is_empty() {
            say("-- no friend requests");
        }
        for request in pending {
            let text = self.request_text(&request).await;
            say(&format!("  #{} {text}", request.request_id));
        }
        Ok(())
    }

    pub(super) async fn respond(&mut self, request_id: u64, accept: bool) -> Result<(), String> {
        let request = self
            .client
            .respond_friend(request_id, accept)
            .await
            .map_err(text)?;
        let from = self.name_of(request.from_user_id).await;
        say(&if accept {
            format!("-- you and {from} are friends now; /chat {from} to talk")
        } else {
            format!("-- rejected the request from {from}")
        });
        Ok(())
    }

    pub(super) async fn friends(&mut self) -> Result<(), String> {
        let friends = self.client.list_friends().await.map_err(text)?.profiles;
        if friends.is_empty() {
            say("-- no friends yet: /add <name>");
            return Ok(());
        }
        let ids = friends.iter().map(|p| p.user_id).collect();
        let statuses = self
            .client
            .query_status(ids)
            .await
            .map(|s| s.statuses)
            .unwrap_or_default();
        for friend in friends {
            self.learn(friend.user_id, &friend.name);
            let online = statuses
                .iter()
                .any(|s| s.user_id == friend.user_id && s.online);
            say(&format!(
                "  {} ({})",
                friend.name,
                if online { "online" } else { "offline" }
            ));
        }
        Ok(())
    }

    pub(super) async fn block(&mut self, name: &str) -> Result<(), String> {
        let id = self.resolve(name).await?;
        self.client.block(id).await.map_err(text)?;
        say(&format!("-- blocked {name}"));
        Ok(())
    }

    pub(super) async fn chat(&mut self, name: &str) -> Result<(), String> {
        let id = self.resolve(name).await?;
        let name = self
            .names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| name.to_owned());
        say(&format!(
            "-- talking to {name} (what you type goes to {name})"
        ));
        self.current = Some(Target::User { id, name });
        Ok(())
    }

    /// `from NAME: MESSAGE  (/accept N or /reject N)` for a pending request.
    pub(super) async fn request_text(&mut self, request: &FriendRequest) -> String {
        let from = self.name_of(request.from_user_id).await;
        let note = if request.message.is_empty() {
            String::new()
        } else {
            format!(": {}", request.message)
        };
        format!(
            "from {from}{note}  (/accept {0} or /reject {0})",
            request.request_id
        )
    }
}
