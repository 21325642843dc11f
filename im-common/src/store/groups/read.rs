//! The reads: groups, members, join requests and user ids.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::error::StoreError;
use crate::proto::{GroupInfo, GroupJoinRequest, GroupMember, GroupRole, JoinPolicy};
use crate::store::Sql;
pub(super) use crate::store::values::{i64_of, marks as list, u64_of};

/// Columns of a [`GroupInfo`], from `chat_groups g`.
const GROUP_COLUMNS: &str = "g.group_id, g.name, g.description, g.owner_id, g.join_policy, \
    g.mute_all, g.created_at, \
    (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.group_id) AS member_count";

const MEMBER_COLUMNS: &str = "user_id, role, muted_until, joined_at";

/// Rows per statement when a list of users is written or looked up.
pub(super) const CHUNK: usize = 256;

fn enum_of<T: TryFrom<i32>>(row: &AnyRow, column: &str) -> Result<T, StoreError> {
    let value: i64 = row.try_get(column)?;
    i32::try_from(value)
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{column} {value}")))
}

fn group_of(row: &AnyRow) -> Result<GroupInfo, StoreError> {
    let policy: JoinPolicy = enum_of(row, "join_policy")?;
    Ok(GroupInfo {
        group_id: u64_of(row, "group_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        owner_id: u64_of(row, "owner_id")?,
        join_policy: policy as i32,
        mute_all: row.try_get::<i64, _>("mute_all")? != 0,
        member_count: u64_of(row, "member_count")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn member_of(row: &AnyRow) -> Result<GroupMember, StoreError> {
    let role: GroupRole = enum_of(row, "role")?;
    Ok(GroupMember {
        user_id: u64_of(row, "user_id")?,
        role: role as i32,
        muted_until_ms: row.try_get("muted_until")?,
        joined_at_ms: row.try_get("joined_at")?,
    })
}

pub(super) async fn read_group(
    pool: &AnyPool,
    group: u64,
) -> Result<Option<GroupInfo>, StoreError> {
    let select = format!(
        "SELECT {GROUP_COLUMNS} FROM chat_groups g WHERE g.group_id = ? AND g.dismissed_at IS NULL"
    );
    let row = sqlx::query(AssertSqlSafe(select))
        .bind(i64_of(group))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(group_of).transpose()
}

impl Sql {
    pub(super) async fn read_member(
        &self,
        group: u64,
        user: u64,
    ) -> Result<Option<GroupMember>, StoreError> {
        let select = format!(
            "SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ? AND user_id = ?"
        );
        let row = sqlx::query(AssertSqlSafe(select))
            .bind(i64_of(group))
            .bind(i64_of(user))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(member_of).transpose()
    }

    pub(super) async fn read_member_ids(&self, group: u64) -> Result<Vec<u64>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id",
        )
        .bind(i64_of(group))
        .fetch_all(self.pool())
        .await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| u64::try_from(id).ok())
            .collect())
    }

    pub(super) async fn read_members(
        &self,
        group: u64,
        after_user: u64,
        limit: u32,
    ) -> Result<(Vec<GroupMember>, bool), StoreError> {
        let select = format!(
            "SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ? AND user_id > ? \
             ORDER BY user_id LIMIT ?"
        );
        let rows = self
            .read(|pool| {
                let query = sqlx::query(AssertSqlSafe(select.as_str()))
                    .bind(i64_of(group))
                    .bind(i64_of(after_user))
                    .bind(i64::from(limit) + 1);
                async move { Ok(query.fetch_all(&pool).await?) }
            })
            .await?;
        let mut members = rows.iter().map(member_of).collect::<Result<Vec<_>, _>>()?;
        let has_more = members.len() > limit as usize;
        members.truncate(limit as usize);
        Ok((members, has_more))
    }

    pub(super) async fn read_groups_of(&self, user: u64) -> Result<Vec<GroupInfo>, StoreError> {
        let select = format!(
            "SELECT {GROUP_COLUMNS} FROM group_members m \
             JOIN chat_groups g ON g.group_id = m.group_id \
             WHERE m.user_id = ? AND g.dismissed_at IS NULL ORDER BY g.group_id"
        );
        let rows = self
            .read(|pool| {
                let query = sqlx::query(AssertSqlSafe(select.as_str())).bind(i64_of(user));
                async move { Ok(query.fetch_all(&pool).await?) }
            })
            .await?;
        rows.iter().map(group_of).collect()
    }

    pub(super) async fn read_existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, StoreError> {
        let mut wanted: Vec<u64> = ids.iter().copied().filter(|&id| id != 0).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(CHUNK) {
            let select = format!(
                "SELECT user_id FROM users WHERE user_id IN ({})",
                list(chunk.len())
            );
            let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(select));
            for id in chunk {
                query = query.bind(i64_of(*id));
            }
            let rows = query.fetch_all(self.pool()).await?;
            found.extend(rows.into_iter().filter_map(|id| u64::try_from(id).ok()));
        }
        found.sort_unstable();
        Ok(found)
    }

    pub(super) async fn read_blockers(
        &self,
        target: u64,
        ids: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        let mut wanted: Vec<u64> = ids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = Vec::new();
        for chunk in wanted.chunks(CHUNK) {
            let select = format!(
                "SELECT user_id FROM blocks WHERE blocked_id = ? AND user_id IN ({})",
                list(chunk.len())
            );
            let mut query =
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(select)).bind(i64_of(target));
            for id in chunk {
                query = query.bind(i64_of(*id));
            }
            let rows = query.fetch_all(self.pool()).await?;
            found.extend(rows.into_iter().filter_map(|id| u64::try_from(id).ok()));
        }
        found.sort_unstable();
        Ok(found)
    }

    pub(super) async fn read_join_requests(
        &self,
        group: u64,
        limit: u32,
    ) -> Result<Vec<GroupJoinRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT group_id, user_id, message, created_at FROM group_join_requests \
             WHERE group_id = ? ORDER BY created_at, user_id LIMIT ?",
        )
        .bind(i64_of(group))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(GroupJoinRequest {
                    group_id: u64_of(row, "group_id")?,
                    user_id: u64_of(row, "user_id")?,
                    message: row.try_get("message")?,
                    created_at_ms: row.try_get("created_at")?,
                })
            })
            .collect()
    }
}
