//! [`Users`]: what every part of the user service shares (database, bus, cache, password
//! hashing, tokens, login throttle), built from its parts so that any binary can host it.
//!
//! The concept modules (`account`, `profiles`, `friends`, `sessions`, `notify`) take it as
//! their state; `handler` routes the rpcs to them.

use std::sync::Arc;

use im_common::bus::Bus;
use im_common::store::Sql;

use crate::auth::{AuthSettings, Passwords, SettingsError, Tokens};
use crate::cache::{CacheSettings, Cached};
use crate::throttle::Throttle;

/// The user service: accounts, sessions, profiles, friends and blocks over a [`Sql`]
/// database and a [`Bus`] (cache and pub/sub).
///
/// ```no_run
/// # async fn demo(sql: im_common::store::Sql, bus: im_common::bus::Bus) -> anyhow::Result<()> {
/// use im_user::{AuthSettings, Users};
/// let auth = AuthSettings { jwt_secret: std::env::var("JWT_SECRET")?, ..AuthSettings::default() };
/// let server = im_user::server(Users::new(sql, bus, auth)?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Users {
    pub(crate) sql: Sql,
    pub(crate) bus: Bus,
    pub(crate) cache: Cached,
    pub(crate) passwords: Arc<Passwords>,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) throttle: Arc<Throttle>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("dialect", &self.sql.dialect())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// A handler with the default cache lifetimes.
    ///
    /// # Errors
    /// [`SettingsError`] when `auth` is unusable: the built-in development secret without
    /// `auth.dev = true`, a secret shorter than 32 bytes, a zero token lifetime or argon2
    /// parameters out of range.
    pub fn new(sql: Sql, bus: Bus, auth: AuthSettings) -> Result<Users, SettingsError> {
        auth.validate()?;
        Ok(Users {
            cache: Cached::new(bus.cache.clone(), CacheSettings::default()),
            throttle: Arc::new(Throttle::new(bus.cache.clone(), &auth)),
            sql,
            bus,
            passwords: Arc::new(Passwords::new(&auth)?),
            tokens: Arc::new(Tokens::new(&auth)),
        })
    }

    /// The same handler with other cache lifetimes.
    pub fn with_cache(mut self, settings: CacheSettings) -> Users {
        self.cache = Cached::new(self.bus.cache.clone(), settings);
        self
    }
}
