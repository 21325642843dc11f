//! [`UserStore`] on MySQL and SQLite: portable SQL, every value a bind parameter.

use sqlx::{AssertSqlSafe, Row};

use super::*;

impl UserStore for Sql {
    async fn create_user(&self, user: NewUser) -> Result<UserProfile, StoreError> {
        let now = now_ms();
        let statement = returning(
            self.dialect(),
            "INSERT INTO users (name, password_hash, nickname, avatar, bio, created_at) \
             VALUES (?, ?, ?, '', '', ?)",
            "user_id",
        );
        let query = sqlx::query(AssertSqlSafe(statement))
            .bind(user.name.clone())
            .bind(user.password_hash)
            .bind(user.nickname.clone())
            .bind(now);
        let user_id = inserted_id(self.dialect(), query, self.pool())
            .await
            .map_err(|err| match err {
                StoreError::Database(db) => conflict_as(db, "user name"),
                other => other,
            })?;
        Ok(UserProfile {
            user_id,
            name: user.name,
            nickname: user.nickname,
            avatar: String::new(),
            bio: String::new(),
            created_at_ms: now,
        })
    }

    async fn user(&self, id: u64) -> Result<Option<UserProfile>, StoreError> {
        let statement = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?");
        self.read(|pool| {
            let query = sqlx::query(AssertSqlSafe(statement.as_str())).bind(i64_of(id));
            async move { Ok(query.fetch_optional(&pool).await?) }
        })
        .await?
        .as_ref()
        .map(profile_of)
        .transpose()
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<UserProfile>, StoreError> {
        let statement = format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?");
        self.read(|pool| {
            let query = sqlx::query(AssertSqlSafe(statement.as_str())).bind(name);
            async move { Ok(query.fetch_optional(&pool).await?) }
        })
        .await?
        .as_ref()
        .map(profile_of)
        .transpose()
    }

    async fn users(&self, ids: &[u64]) -> Result<Vec<UserProfile>, StoreError> {
        let mut profiles = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let marks = super::marks(chunk.len());
            let statement = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id IN ({marks})");
            let rows = self
                .read(|pool| {
                    let mut query = sqlx::query(AssertSqlSafe(statement.as_str()));
                    for &id in chunk {
                        query = query.bind(i64_of(id));
                    }
                    async move { Ok(query.fetch_all(&pool).await?) }
                })
                .await?;
            for row in &rows {
                profiles.push(profile_of(row)?);
            }
        }
        Ok(profiles)
    }

    async fn update_profile(
        &self,
        id: u64,
        update: ProfileUpdate,
    ) -> Result<UserProfile, StoreError> {
        sqlx::query(
            "UPDATE users SET nickname = COALESCE(?, nickname), avatar = COALESCE(?, avatar), \
             bio = COALESCE(?, bio) WHERE user_id = ?",
        )
        .bind(update.nickname)
        .bind(update.avatar)
        .bind(update.bio)
        .bind(i64_of(id))
        .execute(self.pool())
        .await?;
        // Read back from the primary: the replica may not have the change yet. (MySQL counts
        // only changed rows, so the update's row count cannot tell a missing user.)
        let statement = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?");
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(id))
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("user"))?;
        profile_of(&row)
    }

    async fn credentials(&self, name: &str) -> Result<Option<Credentials>, StoreError> {
        let statement = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE name = ?");
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|row| {
            Ok(Credentials {
                profile: profile_of(&row)?,
                password_hash: row.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    async fn create_session(&self, session: Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, device_id, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(session.session_id)
        .bind(i64_of(session.user_id))
        .bind(session.device_id)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(self.pool())
        .await
        .map_err(|err| conflict_as(err, "session"))?;
        Ok(())
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let statement = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?");
        sqlx::query(AssertSqlSafe(statement))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(session_of)
            .transpose()
    }

    async fn sessions(&self, ids: &[String]) -> Result<Vec<Session>, StoreError> {
        let mut sessions = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let marks = super::marks(chunk.len());
            let statement =
                format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id IN ({marks})");
            let mut query = sqlx::query(AssertSqlSafe(statement));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            for row in &query.fetch_all(self.pool()).await? {
                sessions.push(session_of(row)?);
            }
        }
        Ok(sessions)
    }

    async fn revoke_session(&self, user: u64, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at = ? \
             WHERE session_id = ? AND user_id = ? AND revoked_at IS NULL",
        )
        .bind(at_ms)
        .bind(id)
        .bind(i64_of(user))
        .execute(self.pool())
        .await?;
        if revoked.rows_affected() > 0 {
            return Ok(true);
        }
        self.session(id)
            .await
            .map(|found| found.is_some_and(|s| s.user_id == user))
    }

    async fn revoke_sessions(&self, user: u64, at_ms: i64) -> Result<u64, StoreError> {
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at = ? \
             WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?",
        )
        .bind(at_ms)
        .bind(i64_of(user))
        .bind(at_ms)
        .execute(self.pool())
        .await?;
        Ok(revoked.rows_affected())
    }

    async fn create_friend_request(
        &self,
        from: u64,
        to: u64,
        message: &str,
    ) -> Result<FriendRequest, StoreError> {
        // In a write transaction, so that two identical requests at once (on SQLite, where
        // the write lock is taken at BEGIN) do not both insert.
        let mut tx = self.begin_write().await?;
        let statement = format!(
            "SELECT {REQUEST_COLUMNS} FROM friend_requests \
             WHERE from_user = ? AND to_user = ? AND state = ? ORDER BY request_id LIMIT 1"
        );
        let pending = sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(from))
            .bind(i64_of(to))
            .bind(PENDING)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = pending {
            tx.rollback().await?;
            return request_of(&row);
        }
        let now = now_ms();
        let statement = returning(
            self.dialect(),
            "INSERT INTO friend_requests \
             (from_user, to_user, message, state, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
            "request_id",
        );
        let query = sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(from))
            .bind(i64_of(to))
            .bind(message)
            .bind(PENDING)
            .bind(now)
            .bind(now);
        let request_id = inserted_id(self.dialect(), query, &mut *tx).await?;
        tx.commit().await?;
        Ok(FriendRequest {
            request_id,
            from_user_id: from,
            to_user_id: to,
            message: message.to_owned(),
            state: FriendRequestState::Pending as i32,
            created_at_ms: now,
        })
    }

    async fn friend_request(&self, id: u64) -> Result<Option<FriendRequest>, StoreError> {
        let statement =
            format!("SELECT {REQUEST_COLUMNS} FROM friend_requests WHERE request_id = ?");
        sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(id))
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(request_of)
            .transpose()
    }

    async fn pending_request(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Option<FriendRequest>, StoreError> {
        let statement = format!(
            "SELECT {REQUEST_COLUMNS} FROM friend_requests \
             WHERE from_user = ? AND to_user = ? AND state = ? ORDER BY request_id LIMIT 1"
        );
        sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(from))
            .bind(i64_of(to))
            .bind(PENDING)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(request_of)
            .transpose()
    }

    async fn friend_requests(
        &self,
        user: u64,
        direction: Direction,
        limit: u32,
    ) -> Result<Vec<FriendRequest>, StoreError> {
        let column = match direction {
            Direction::Incoming => "to_user",
            Direction::Outgoing => "from_user",
        };
        let statement = format!(
            "SELECT {REQUEST_COLUMNS} FROM friend_requests WHERE {column} = ? \
             ORDER BY request_id DESC LIMIT ?"
        );
        let rows = sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(user))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(request_of).collect()
    }

    async fn settle_friend_request(
        &self,
        id: u64,
        accept: bool,
    ) -> Result<FriendRequest, StoreError> {
        let mut tx = self.begin_write().await?;
        let statement =
            format!("SELECT {REQUEST_COLUMNS} FROM friend_requests WHERE request_id = ?");
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(i64_of(id))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("friend request"))?;
        let mut request = request_of(&row)?;
        let state = if accept { ACCEPTED } else { REJECTED };
        let now = now_ms();
        // The state condition settles a request once, also when two answers race on MySQL
        // (where the read above takes no lock).
        let settled = sqlx::query(
            "UPDATE friend_requests SET state = ?, updated_at = ? \
             WHERE request_id = ? AND state = ?",
        )
        .bind(state)
        .bind(now)
        .bind(i64_of(id))
        .bind(PENDING)
        .execute(&mut *tx)
        .await?;
        if settled.rows_affected() == 0 {
            tx.rollback().await?;
            let now_state = self
                .friend_request(id)
                .await?
                .map_or(request.state, |r| r.state);
            return Err(StoreError::Precondition(format!(
                "friend request already {}",
                state_name(now_state)
            )));
        }
        if accept {
            let (a, b) = (i64_of(request.from_user_id), i64_of(request.to_user_id));
            let statement = format!(
                "{} INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?), (?, ?, ?)",
                self.dialect().insert_ignore()
            );
            sqlx::query(AssertSqlSafe(statement))
                .bind(a)
                .bind(b)
                .bind(now)
                .bind(b)
                .bind(a)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            settle_between(&mut tx, a, b, ACCEPTED, now).await?;
        }
        tx.commit().await?;
        request.state = i32::try_from(state).unwrap_or_default();
        Ok(request)
    }

    async fn list_friends(&self, user: u64) -> Result<Vec<u64>, StoreError> {
        self.ids(
            "SELECT friend_id FROM friends WHERE user_id = ? ORDER BY friend_id",
            user,
        )
        .await
    }

    async fn are_friends(&self, a: u64, b: u64) -> Result<bool, StoreError> {
        self.exists(
            "SELECT 1 FROM friends WHERE user_id = ? AND friend_id = ?",
            a,
            b,
        )
        .await
    }

    async fn remove_friend(&self, a: u64, b: u64) -> Result<bool, StoreError> {
        let removed = sqlx::query(
            "DELETE FROM friends \
             WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
        )
        .bind(i64_of(a))
        .bind(i64_of(b))
        .bind(i64_of(b))
        .bind(i64_of(a))
        .execute(self.pool())
        .await?;
        Ok(removed.rows_affected() > 0)
    }

    async fn block(&self, user: u64, target: u64) -> Result<(), StoreError> {
        let (a, b) = (i64_of(user), i64_of(target));
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let statement = format!(
            "{} INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, ?)",
            self.dialect().insert_ignore()
        );
        sqlx::query(AssertSqlSafe(statement))
            .bind(a)
            .bind(b)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM friends \
             WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
        )
        .bind(a)
        .bind(b)
        .bind(b)
        .bind(a)
        .execute(&mut *tx)
        .await?;
        settle_between(&mut tx, a, b, REJECTED, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unblock(&self, user: u64, target: u64) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?")
            .bind(i64_of(user))
            .bind(i64_of(target))
            .execute(self.pool())
            .await?;
        Ok(removed.rows_affected() > 0)
    }

    async fn list_blocked(&self, user: u64) -> Result<Vec<u64>, StoreError> {
        self.ids(
            "SELECT blocked_id FROM blocks WHERE user_id = ? ORDER BY blocked_id",
            user,
        )
        .await
    }

    async fn is_blocked(&self, by: u64, target: u64) -> Result<bool, StoreError> {
        self.exists(
            "SELECT 1 FROM blocks WHERE user_id = ? AND blocked_id = ?",
            by,
            target,
        )
        .await
    }
}

/// Settles every request pending between `a` and `b` (either direction) as `state`.
async fn settle_between(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    a: i64,
    b: i64,
    state: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(SETTLE_BETWEEN)
        .bind(state)
        .bind(now)
        .bind(PENDING)
        .bind(a)
        .bind(b)
        .bind(b)
        .bind(a)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
