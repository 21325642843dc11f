//! The bus cache in front of the database: profiles, friend and block lists, session state.
//!
//! The database owns every value; a cache that misses, was flushed, holds garbage or fails
//! only costs a database read (failures are logged). Every write invalidates the keys it
//! makes stale, after the database commit; friend and block lists are filled only by reads
//! that began after the last invalidation (see `im_common::bus::Cache`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use im_common::StoreError;
use im_common::bus::{Cache, keys, read_ids_through};
use im_common::proto::UserProfile;
use prost::Message;
use serde::Deserialize;
use tracing::warn;

/// How long values stay cached (`[cache]`); writes delete them sooner.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Profiles, in seconds. Default 300.
    pub profile_ttl_secs: u64,
    /// Friend and block lists, in seconds. Default 60.
    pub list_ttl_secs: u64,
    /// That a session is active, in seconds. Default 30. Logout deletes the entry, so a
    /// revocation is seen at once; the lifetime only bounds an entry a check wrote while
    /// racing the logout.
    pub session_ttl_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            profile_ttl_secs: 300,
            list_ttl_secs: 60,
            session_ttl_secs: 30,
        }
    }
}

/// Which id list of a user.
#[derive(Debug, Clone, Copy)]
pub(crate) enum List {
    Friends,
    Blocked,
}

impl List {
    fn key(self, user: u64) -> String {
        match self {
            List::Friends => keys::friends(user),
            List::Blocked => keys::blocked(user),
        }
    }
}

/// Typed access to the cache, never failing.
#[derive(Clone)]
pub(crate) struct Cached {
    cache: Arc<dyn Cache>,
    settings: CacheSettings,
}

impl Cached {
    pub(crate) fn new(cache: Arc<dyn Cache>, settings: CacheSettings) -> Cached {
        Cached { cache, settings }
    }

    pub(crate) async fn profile(&self, user: u64) -> Option<UserProfile> {
        let bytes = self.get(keys::profile(user)).await?;
        UserProfile::decode(bytes)
            .ok()
            .filter(|p| p.user_id == user)
    }

    pub(crate) async fn set_profile(&self, profile: &UserProfile) {
        let ttl = Duration::from_secs(self.settings.profile_ttl_secs);
        let bytes = Bytes::from(profile.encode_to_vec());
        self.set(keys::profile(profile.user_id), bytes, ttl).await;
    }

    /// `user`'s list from the cache, else from `load` (the database), in the encoding other
    /// services read too (`UserIds`). A read that began before a change never fills the
    /// cache after the change's invalidation ([`read_through`]).
    ///
    /// # Errors
    /// `load`'s.
    pub(crate) async fn ids_through<Fut>(
        &self,
        list: List,
        user: u64,
        load: impl FnOnce() -> Fut,
    ) -> Result<Vec<u64>, StoreError>
    where
        Fut: Future<Output = Result<Vec<u64>, StoreError>>,
    {
        let ttl = Duration::from_secs(self.settings.list_ttl_secs);
        read_ids_through(self.cache.as_ref(), list.key(user), ttl, load).await
    }

    /// Whether the cache says `session` is an active session of `user`. (The entry holds
    /// the owner's id, so a token naming someone else's session is not taken on its word.)
    pub(crate) async fn session_active(&self, session: &str, user: u64) -> bool {
        self.get(keys::session(session))
            .await
            .is_some_and(|value| value == user.to_string().as_bytes())
    }

    /// Notes that `session` is an active session of `user`, for at most `remaining` (until
    /// its token expires), unless the entry holds something already: a revocation written
    /// by a Logout that ran between this caller's database read and now must not be
    /// overwritten by the older "active".
    pub(crate) async fn set_session_active(&self, session: &str, user: u64, remaining: Duration) {
        let ttl = Duration::from_secs(self.settings.session_ttl_secs).min(remaining);
        if !ttl.is_zero() {
            let value = Bytes::from(user.to_string());
            let key = keys::session(session);
            if let Err(err) = self.cache.set_if_absent(key, value, ttl).await {
                metrics::counter!("mpim_user_cache_failures_total").increment(1);
                warn!(cause = %err, "cache write failed");
            }
        }
    }

    /// Marks `session` revoked in the cache for as long as an "active" entry could live, so
    /// that no concurrent verification can cache it as active again.
    pub(crate) async fn set_session_revoked(&self, session: &str) {
        let ttl = Duration::from_secs(self.settings.session_ttl_secs.max(1));
        self.set(keys::session(session), Bytes::from_static(b"revoked"), ttl)
            .await;
    }

    /// Deletes `keys`.
    pub(crate) async fn forget(&self, keys: Vec<String>) {
        if let Err(err) = self.cache.delete(keys.clone()).await {
            // The entries live out their TTL: as stale as the TTL allows, never longer.
            metrics::counter!("mpim_user_cache_failures_total").increment(1);
            warn!(cause = %err, ?keys, "cache delete failed");
        }
    }

    /// The keys of both users' friend and block lists.
    pub(crate) fn graph_keys(a: u64, b: u64) -> Vec<String> {
        vec![
            keys::friends(a),
            keys::friends(b),
            keys::blocked(a),
            keys::blocked(b),
        ]
    }

    async fn get(&self, key: String) -> Option<Bytes> {
        match self.cache.get(key).await {
            Ok(value) => value,
            Err(err) => {
                metrics::counter!("mpim_user_cache_failures_total").increment(1);
                warn!(cause = %err, "cache read failed; reading the database");
                None
            }
        }
    }

    async fn set(&self, key: String, value: Bytes, ttl: Duration) {
        if let Err(err) = self.cache.set(key, value, ttl).await {
            metrics::counter!("mpim_user_cache_failures_total").increment(1);
            warn!(cause = %err, "cache write failed");
        }
    }
}
