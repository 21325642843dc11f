//! The writes that change members' roles and mutes and the group's own information.

use sqlx::AssertSqlSafe;

use super::GroupUpdate;
use super::read::i64_of;
use super::write::{ADMIN, OWNER, member_role};
use crate::error::StoreError;
use crate::proto::GroupRole;
use crate::store::Sql;

impl Sql {
    pub(super) async fn update_role(
        &self,
        group: u64,
        user: u64,
        role: GroupRole,
    ) -> Result<(), StoreError> {
        if !matches!(role, GroupRole::Member | GroupRole::Admin) {
            return Err(StoreError::Precondition(
                "a role set directly is MEMBER or ADMIN".into(),
            ));
        }
        let done = sqlx::query(
            "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ? AND role <> ?",
        )
        .bind(i64::from(role as i32))
        .bind(i64_of(group))
        .bind(i64_of(user))
        .bind(OWNER)
        .execute(self.pool())
        .await?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        match member_role(self.pool(), group, user).await? {
            None => Err(StoreError::NotFound("member")),
            Some(_) => Err(StoreError::Precondition(
                "the owner's role changes only by transferring ownership".into(),
            )),
        }
    }

    pub(super) async fn move_ownership(
        &self,
        group: u64,
        from: u64,
        to: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let owner = self.lock_group(&mut tx, group).await?;
        if owner != from {
            return Err(StoreError::Precondition(
                "only the current owner transfers ownership".into(),
            ));
        }
        if member_role(&mut *tx, group, to).await?.is_none() {
            return Err(StoreError::NotFound("member"));
        }
        if to == from {
            return Ok(());
        }
        for (user, role) in [(from, ADMIN), (to, OWNER)] {
            sqlx::query("UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?")
                .bind(role)
                .bind(i64_of(group))
                .bind(i64_of(user))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE chat_groups SET owner_id = ? WHERE group_id = ?")
            .bind(i64_of(to))
            .bind(i64_of(group))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn update_mute(
        &self,
        group: u64,
        user: u64,
        until_ms: i64,
        up_to: GroupRole,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE group_members SET muted_until = ? \
             WHERE group_id = ? AND user_id = ? AND role <= ?",
        )
        .bind(until_ms)
        .bind(i64_of(group))
        .bind(i64_of(user))
        .bind(i64::from(up_to as i32))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn update_mute_all(
        &self,
        group: u64,
        muted: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE chat_groups SET mute_all = ? WHERE group_id = ? AND dismissed_at IS NULL",
        )
        .bind(i64::from(muted))
        .bind(i64_of(group))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn update_info(
        &self,
        group: u64,
        update: &GroupUpdate,
    ) -> Result<(), StoreError> {
        let mut sets = Vec::new();
        if update.name.is_some() {
            sets.push("name = ?");
        }
        if update.description.is_some() {
            sets.push("description = ?");
        }
        if update.join_policy.is_some() {
            sets.push("join_policy = ?");
        }
        if sets.is_empty() {
            return Ok(());
        }
        // Only fixed fragments are joined into the statement; the values are bound.
        let statement = format!(
            "UPDATE chat_groups SET {} WHERE group_id = ? AND dismissed_at IS NULL",
            sets.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(statement));
        if let Some(name) = &update.name {
            query = query.bind(name.clone());
        }
        if let Some(description) = &update.description {
            query = query.bind(description.clone());
        }
        if let Some(policy) = update.join_policy {
            query = query.bind(i64::from(policy as i32));
        }
        query.bind(i64_of(group)).execute(self.pool()).await?;
        Ok(())
    }
}
