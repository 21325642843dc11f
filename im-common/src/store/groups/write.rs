//! The transactions that change who is in a group: creation, additions, join requests,
//! leaving, removal and dismissal.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, Row};

use super::{CHUNK, Departure, JoinState, NewGroup, i64_of, list};
use crate::error::StoreError;
use crate::ids::{ConversationId, now_ms};
use crate::proto::{GroupInfo, GroupRole};
use crate::store::{Dialect, Sql};

pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;

pub(super) const OWNER: i64 = GroupRole::Owner as i64;
pub(super) const ADMIN: i64 = GroupRole::Admin as i64;
const MEMBER: i64 = GroupRole::Member as i64;

pub(super) fn conv_of(group: u64) -> String {
    ConversationId::Group(group).to_string()
}

/// The suffix that locks the rows a `SELECT` reads until commit (SQLite's write
/// transaction holds the whole database already).
pub(super) fn for_update(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => " FOR UPDATE",
        Dialect::Sqlite => "",
    }
}

impl Sql {
    /// Locks a live group's row for the transaction; returns its owner.
    pub(super) async fn lock_group(&self, tx: &mut Tx, group: u64) -> Result<u64, StoreError> {
        let select = format!(
            "SELECT owner_id FROM chat_groups WHERE group_id = ? AND dismissed_at IS NULL{}",
            for_update(self.dialect())
        );
        let owner: Option<i64> = sqlx::query_scalar(AssertSqlSafe(select))
            .bind(i64_of(group))
            .fetch_optional(&mut **tx)
            .await?;
        let owner = owner.ok_or(StoreError::NotFound("group"))?;
        u64::try_from(owner).map_err(|_| StoreError::Corrupt("negative owner_id".into()))
    }

    /// The id the last `INSERT` on this transaction's connection generated.
    async fn inserted_id(
        &self,
        tx: &mut Tx,
        result: &sqlx::any::AnyQueryResult,
    ) -> Result<u64, StoreError> {
        let id = match result.last_insert_id() {
            Some(id) => id,
            // The Any driver does not pass SQLite's rowid on; it is per connection.
            None => {
                sqlx::query_scalar::<_, i64>("SELECT last_insert_rowid()")
                    .fetch_one(&mut **tx)
                    .await?
            }
        };
        u64::try_from(id).map_err(|_| StoreError::Corrupt("negative group_id".into()))
    }

    pub(super) async fn insert_group(&self, new: &NewGroup) -> Result<GroupInfo, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "INSERT INTO chat_groups (name, description, owner_id, join_policy, mute_all, created_at) \
             VALUES (?, ?, ?, ?, 0, ?)",
        )
        .bind(new.name.clone())
        .bind(new.description.clone())
        .bind(i64_of(new.owner))
        .bind(i64::from(new.join_policy as i32))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let group = self.inserted_id(&mut tx, &result).await?;
        sqlx::query("INSERT INTO conversations (conv_id, last_seq, updated_at) VALUES (?, 0, ?)")
            .bind(conv_of(group))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut seen = HashSet::from([new.owner]);
        let members: Vec<u64> = new
            .members
            .iter()
            .copied()
            .filter(|user| seen.insert(*user))
            .collect();
        write_members(&mut tx, group, &[new.owner], OWNER, 0, now).await?;
        write_members(&mut tx, group, &members, MEMBER, 0, now).await?;
        tx.commit().await?;
        Ok(GroupInfo {
            group_id: group,
            name: new.name.clone(),
            description: new.description.clone(),
            owner_id: new.owner,
            join_policy: new.join_policy as i32,
            mute_all: false,
            member_count: members.len() as u64 + 1,
            created_at_ms: now,
        })
    }

    pub(super) async fn insert_members(
        &self,
        group: u64,
        users: &[u64],
        max_members: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_group(&mut tx, group).await?;
        let added = self.add_locked(&mut tx, group, users, max_members).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Adds the users who are not members yet to a group locked by this transaction, with
    /// their read cursors at the conversation's last seq, and settles their join requests.
    async fn add_locked(
        &self,
        tx: &mut Tx,
        group: u64,
        users: &[u64],
        max_members: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut present: HashSet<u64> = HashSet::new();
        let mut wanted: Vec<u64> = users.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        for chunk in wanted.chunks(CHUNK) {
            let select = format!(
                "SELECT user_id FROM group_members WHERE group_id = ? AND user_id IN ({})",
                list(chunk.len())
            );
            let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(select)).bind(i64_of(group));
            for user in chunk {
                query = query.bind(i64_of(*user));
            }
            for id in query.fetch_all(&mut **tx).await? {
                present.extend(u64::try_from(id).ok());
            }
        }
        let new: Vec<u64> = users
            .iter()
            .copied()
            .filter(|user| present.insert(*user))
            .collect();
        if new.is_empty() {
            return Ok(new);
        }
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM group_members WHERE group_id = ?")
                .bind(i64_of(group))
                .fetch_one(&mut **tx)
                .await?;
        let total = u64::try_from(count).unwrap_or(0) + new.len() as u64;
        if total > max_members {
            return Err(StoreError::Precondition(format!(
                "the group would have {total} members, more than the limit of {max_members}"
            )));
        }
        let now = now_ms();
        let last_seq = self.lock_last_seq(tx, group, now).await?;
        write_members(tx, group, &new, MEMBER, last_seq, now).await?;
        for chunk in new.chunks(CHUNK) {
            let delete = format!(
                "DELETE FROM group_join_requests WHERE group_id = ? AND user_id IN ({})",
                list(chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(delete)).bind(i64_of(group));
            for user in chunk {
                query = query.bind(i64_of(*user));
            }
            query.execute(&mut **tx).await?;
        }
        Ok(new)
    }

    /// The group conversation's last seq, locked until commit so that no message lands
    /// between reading it and the new members' cursors (the row is created if missing).
    async fn lock_last_seq(&self, tx: &mut Tx, group: u64, now: i64) -> Result<i64, StoreError> {
        let insert = format!(
            "{} INTO conversations (conv_id, last_seq, updated_at) VALUES (?, 0, ?)",
            self.dialect().insert_ignore()
        );
        sqlx::query(AssertSqlSafe(insert))
            .bind(conv_of(group))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let select = format!(
            "SELECT last_seq FROM conversations WHERE conv_id = ?{}",
            for_update(self.dialect())
        );
        Ok(sqlx::query_scalar(AssertSqlSafe(select))
            .bind(conv_of(group))
            .fetch_one(&mut **tx)
            .await?)
    }

    pub(super) async fn insert_join_request(
        &self,
        group: u64,
        user: u64,
        message: &str,
    ) -> Result<JoinState, StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_group(&mut tx, group).await?;
        if member_role(&mut *tx, group, user).await?.is_some() {
            return Ok(JoinState::Member);
        }
        let insert = format!(
            "{} INTO group_join_requests (group_id, user_id, message, created_at) VALUES (?, ?, ?, ?)",
            self.dialect().insert_ignore()
        );
        sqlx::query(AssertSqlSafe(insert))
            .bind(i64_of(group))
            .bind(i64_of(user))
            .bind(message.to_owned())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(JoinState::Requested)
    }

    pub(super) async fn settle_join_request(
        &self,
        group: u64,
        user: u64,
        accept: bool,
        max_members: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_group(&mut tx, group).await?;
        let deleted =
            sqlx::query("DELETE FROM group_join_requests WHERE group_id = ? AND user_id = ?")
                .bind(i64_of(group))
                .bind(i64_of(user))
                .execute(&mut *tx)
                .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound("join request"));
        }
        if accept {
            self.add_locked(&mut tx, group, &[user], max_members)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn delete_self(
        &self,
        group: u64,
        user: u64,
    ) -> Result<Option<Departure>, StoreError> {
        let mut tx = self.begin_write().await?;
        let owner = self.lock_group(&mut tx, group).await?;
        if member_role(&mut *tx, group, user).await?.is_none() {
            return Ok(None);
        }
        if user == owner {
            let count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM group_members WHERE group_id = ?")
                    .bind(i64_of(group))
                    .fetch_one(&mut *tx)
                    .await?;
            if count > 1 {
                return Err(StoreError::Precondition(
                    "the owner must transfer ownership (SetRole OWNER) before leaving".into(),
                ));
            }
            dismiss_locked(&mut tx, group).await?;
            tx.commit().await?;
            return Ok(Some(Departure::Dismissed));
        }
        delete_rows(&mut tx, group, user, ADMIN).await?;
        tx.commit().await?;
        Ok(Some(Departure::Left))
    }

    pub(super) async fn delete_member(
        &self,
        group: u64,
        user: u64,
        up_to: GroupRole,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let removed = delete_rows(&mut tx, group, user, i64::from(up_to as i32).min(ADMIN)).await?;
        tx.commit().await?;
        Ok(removed)
    }

    pub(super) async fn dismiss_group(&self, group: u64) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        match self.lock_group(&mut tx, group).await {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => return Ok(false),
            Err(err) => return Err(err),
        }
        dismiss_locked(&mut tx, group).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Inserts `users` with `role` into `group_members` and the group conversation's
/// `conv_members` (cursor at `read_seq`).
async fn write_members(
    tx: &mut Tx,
    group: u64,
    users: &[u64],
    role: i64,
    read_seq: i64,
    now: i64,
) -> Result<(), StoreError> {
    let conv = conv_of(group);
    for chunk in users.chunks(CHUNK) {
        let rows = vec!["(?, ?, ?, 0, ?)"; chunk.len()].join(", ");
        let insert = format!(
            "INSERT INTO group_members (group_id, user_id, role, muted_until, joined_at) VALUES {rows}"
        );
        let mut query = sqlx::query(AssertSqlSafe(insert));
        for user in chunk {
            query = query
                .bind(i64_of(group))
                .bind(i64_of(*user))
                .bind(role)
                .bind(now);
        }
        query.execute(&mut **tx).await?;

        // A member who left keeps no conversation row; should one be there all the same, the
        // new cursor replaces it rather than failing the join.
        let delete = format!(
            "DELETE FROM conv_members WHERE conv_id = ? AND user_id IN ({})",
            list(chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(delete)).bind(conv.clone());
        for user in chunk {
            query = query.bind(i64_of(*user));
        }
        query.execute(&mut **tx).await?;
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let insert = format!("INSERT INTO conv_members (conv_id, user_id, read_seq) VALUES {rows}");
        let mut query = sqlx::query(AssertSqlSafe(insert));
        for user in chunk {
            query = query.bind(conv.clone()).bind(i64_of(*user)).bind(read_seq);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The role of `user` in `group`, if a member.
pub(super) async fn member_role<'c, E>(
    executor: E,
    group: u64,
    user: u64,
) -> Result<Option<i64>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    Ok(
        sqlx::query("SELECT role FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(i64_of(group))
            .bind(i64_of(user))
            .fetch_optional(executor)
            .await?
            .map(|row| row.try_get::<i64, _>("role"))
            .transpose()?,
    )
}

/// Deletes `user`'s membership rows if their role is at most `up_to`; whether it did.
async fn delete_rows(tx: &mut Tx, group: u64, user: u64, up_to: i64) -> Result<bool, StoreError> {
    let done =
        sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ? AND role <= ?")
            .bind(i64_of(group))
            .bind(i64_of(user))
            .bind(up_to)
            .execute(&mut **tx)
            .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM conv_members WHERE conv_id = ? AND user_id = ?")
        .bind(conv_of(group))
        .bind(i64_of(user))
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// Marks a locked group dismissed and removes its members, their conversation rows and
/// its join requests (its messages stay).
async fn dismiss_locked(tx: &mut Tx, group: u64) -> Result<(), StoreError> {
    sqlx::query("UPDATE chat_groups SET dismissed_at = ? WHERE group_id = ?")
        .bind(now_ms())
        .bind(i64_of(group))
        .execute(&mut **tx)
        .await?;
    for statement in [
        "DELETE FROM group_members WHERE group_id = ?",
        "DELETE FROM group_join_requests WHERE group_id = ?",
    ] {
        sqlx::query(statement)
            .bind(i64_of(group))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM conv_members WHERE conv_id = ?")
        .bind(conv_of(group))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
