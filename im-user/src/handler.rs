//! [`Users`]: the `UserService` handler, built from its parts so that any binary can host it.

use std::sync::Arc;

use im_common::bus::Bus;
use im_common::proto::{CheckSessionsReply, CheckSessionsRequest};
use im_common::proto::{
    Empty, FriendRequest, FriendRequests, GetProfilesRequest, ListFriendRequestsRequest,
    LoginReply, LoginRequest, LogoutRequest, Profiles, RegisterRequest,
    RespondFriendRequestRequest, SearchUserRequest, SendFriendRequestRequest, UpdateProfileRequest,
    UserId, UserIds, UserProfile, UserService, VerifyTokenReply, VerifyTokenRequest,
};
use im_common::store::Sql;
use mprpc::{Context, Status};

use crate::auth::{AuthSettings, Passwords, SettingsError, Tokens};
use crate::cache::{CacheSettings, Cached};
use crate::throttle::Throttle;
use crate::{account, friends, profiles, sessions};

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

impl UserService for Users {
    async fn register(&self, _ctx: Context, req: RegisterRequest) -> Result<UserProfile, Status> {
        account::register(self, req).await
    }

    async fn login(&self, _ctx: Context, req: LoginRequest) -> Result<LoginReply, Status> {
        account::login(self, req).await
    }

    async fn verify_token(
        &self,
        _ctx: Context,
        req: VerifyTokenRequest,
    ) -> Result<VerifyTokenReply, Status> {
        account::verify_token(self, req).await
    }

    async fn logout(&self, ctx: Context, req: LogoutRequest) -> Result<Empty, Status> {
        account::logout(self, &ctx, req).await
    }

    async fn get_profile(&self, ctx: Context, req: UserId) -> Result<UserProfile, Status> {
        profiles::get_profile(self, &ctx, req).await
    }

    async fn update_profile(
        &self,
        ctx: Context,
        req: UpdateProfileRequest,
    ) -> Result<UserProfile, Status> {
        profiles::update_profile(self, &ctx, req).await
    }

    async fn get_profiles(
        &self,
        ctx: Context,
        req: GetProfilesRequest,
    ) -> Result<Profiles, Status> {
        profiles::get_profiles(self, &ctx, req).await
    }

    async fn search_user(&self, ctx: Context, req: SearchUserRequest) -> Result<Profiles, Status> {
        profiles::search_user(self, &ctx, req).await
    }

    async fn send_friend_request(
        &self,
        ctx: Context,
        req: SendFriendRequestRequest,
    ) -> Result<FriendRequest, Status> {
        friends::send_request(self, &ctx, req).await
    }

    async fn respond_friend_request(
        &self,
        ctx: Context,
        req: RespondFriendRequestRequest,
    ) -> Result<FriendRequest, Status> {
        friends::respond(self, &ctx, req).await
    }

    async fn list_friend_requests(
        &self,
        ctx: Context,
        req: ListFriendRequestsRequest,
    ) -> Result<FriendRequests, Status> {
        friends::list_requests(self, &ctx, req).await
    }

    async fn remove_friend(&self, ctx: Context, req: UserId) -> Result<Empty, Status> {
        friends::remove(self, &ctx, req).await
    }

    async fn list_friends(&self, ctx: Context, _req: Empty) -> Result<Profiles, Status> {
        friends::list(self, &ctx).await
    }

    async fn block(&self, ctx: Context, req: UserId) -> Result<Empty, Status> {
        friends::block(self, &ctx, req).await
    }

    async fn unblock(&self, ctx: Context, req: UserId) -> Result<Empty, Status> {
        friends::unblock(self, &ctx, req).await
    }

    async fn list_blocked(&self, ctx: Context, _req: Empty) -> Result<UserIds, Status> {
        friends::list_blocked(self, &ctx).await
    }

    async fn check_sessions(
        &self,
        _ctx: Context,
        req: CheckSessionsRequest,
    ) -> Result<CheckSessionsReply, Status> {
        sessions::check_sessions(self, req).await
    }

    async fn status_visible(&self, ctx: Context, req: UserIds) -> Result<UserIds, Status> {
        profiles::status_visible(self, &ctx, req).await
    }
}
