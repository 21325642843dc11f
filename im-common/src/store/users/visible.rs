//! Whom a user may look up: the relationships that let one user see another's profile or
//! presence ([`Scope`]). Read from the primary, like the rest of the social graph: a look-up
//! right after an accept or a join must see it.

use sqlx::AssertSqlSafe;

use super::*;
use crate::ids::ConversationId;
use crate::proto::GroupRole;

/// What a look-up is for, and so which relationships count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Online status: friends, and members of a group the viewer is in.
    Status,
    /// Profile (login name, nickname, …): those of [`Scope::Status`], and users the viewer
    /// blocked, users with a pending friend request to the viewer, users asking to join a
    /// group the viewer owns or administers, and users who wrote to the viewer in a 1:1
    /// conversation.
    Profile,
}

// Each relationship as a query: the first bind is the viewer, `{}` the list of the others.
const FRIENDS: &str = "SELECT friend_id FROM friends WHERE user_id = ? AND friend_id IN ({})";
const CO_MEMBERS: &str = "SELECT DISTINCT b.user_id FROM group_members a \
    JOIN group_members b ON b.group_id = a.group_id \
    WHERE a.user_id = ? AND b.user_id IN ({})";
const BLOCKED: &str = "SELECT blocked_id FROM blocks WHERE user_id = ? AND blocked_id IN ({})";
const ASKED_FRIEND: &str = "SELECT DISTINCT from_user FROM friend_requests \
    WHERE to_user = ? AND state = ? AND from_user IN ({})";
const ASKED_TO_JOIN: &str = "SELECT DISTINCT r.user_id FROM group_join_requests r \
    JOIN group_members m ON m.group_id = r.group_id \
    WHERE m.user_id = ? AND m.role IN (?, ?) AND r.user_id IN ({})";

impl Sql {
    /// Those of `others` that `viewer` may see for `scope` (`viewer` itself included when
    /// named), each once, in no particular order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn visible(
        &self,
        viewer: u64,
        others: &[u64],
        scope: Scope,
    ) -> Result<Vec<u64>, StoreError> {
        let mut left: Vec<u64> = others.to_vec();
        left.sort_unstable();
        left.dedup();
        let mut seen = Vec::new();
        if let Ok(at) = left.binary_search(&viewer) {
            seen.push(left.remove(at));
        }
        let mut take = |found: Vec<u64>, left: &mut Vec<u64>| {
            left.retain(|id| !found.contains(id));
            seen.extend(found);
        };
        for statement in [FRIENDS, CO_MEMBERS] {
            let found = self.related(statement, viewer, &[], &left).await?;
            take(found, &mut left);
        }
        if scope == Scope::Profile {
            let found = self.related(BLOCKED, viewer, &[], &left).await?;
            take(found, &mut left);
            let found = self
                .related(ASKED_FRIEND, viewer, &[PENDING], &left)
                .await?;
            take(found, &mut left);
            let managers = [GroupRole::Admin as i64, GroupRole::Owner as i64];
            let found = self
                .related(ASKED_TO_JOIN, viewer, &managers, &left)
                .await?;
            take(found, &mut left);
            let found = self.wrote_to(viewer, &left).await?;
            take(found, &mut left);
        }
        Ok(seen)
    }

    /// Of `others`, those `statement` relates to `viewer` (binds: `viewer`, `extra`, the
    /// ids), in chunks of [`IN_CHUNK`].
    async fn related(
        &self,
        statement: &'static str,
        viewer: u64,
        extra: &[i64],
        others: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        let mut found = Vec::new();
        for chunk in others.chunks(IN_CHUNK) {
            let marks = super::marks(chunk.len());
            let statement = statement.replace("{}", &marks);
            let mut query = sqlx::query_scalar(AssertSqlSafe(statement)).bind(i64_of(viewer));
            for &value in extra {
                query = query.bind(value);
            }
            for &id in chunk {
                query = query.bind(i64_of(id));
            }
            let rows: Vec<i64> = query.fetch_all(self.pool()).await?;
            found.extend(ids_of(rows));
        }
        Ok(found)
    }

    /// Of `others`, those who wrote in their 1:1 conversation with `viewer`. Only
    /// conversations that exist are looked into, one query each (it stops at the first
    /// message found); `others` holds only those no cheaper relationship matched.
    async fn wrote_to(&self, viewer: u64, others: &[u64]) -> Result<Vec<u64>, StoreError> {
        let conversations: Vec<String> = others
            .iter()
            .map(|&other| ConversationId::direct(viewer, other).to_string())
            .collect();
        let mut existing = Vec::new();
        for chunk in conversations.chunks(IN_CHUNK) {
            let marks = super::marks(chunk.len());
            let statement = format!(
                "SELECT conv_id FROM conv_members WHERE user_id = ? AND conv_id IN ({marks})"
            );
            let mut query = sqlx::query_scalar(AssertSqlSafe(statement)).bind(i64_of(viewer));
            for conversation in chunk {
                query = query.bind(conversation.as_str());
            }
            let rows: Vec<String> = query.fetch_all(self.pool()).await?;
            existing.extend(rows);
        }
        let mut wrote = Vec::new();
        for conversation in existing {
            let Some(peer) = ConversationId::parse(&conversation)
                .ok()
                .and_then(|c| c.peer_of(viewer))
            else {
                continue;
            };
            let row =
                sqlx::query("SELECT 1 FROM messages WHERE conv_id = ? AND sender_id = ? LIMIT 1")
                    .bind(conversation.as_str())
                    .bind(i64_of(peer))
                    .fetch_optional(self.pool())
                    .await?;
            if row.is_some() {
                wrote.push(peer);
            }
        }
        Ok(wrote)
    }
}
