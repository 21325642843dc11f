//! Register, Login, VerifyToken and Logout.
//!
//! A login creates a session row (random id) and signs a token naming it; VerifyToken
//! checks the signature and expiry, then that the session still stands (through the cache,
//! which Logout clears, so a revocation takes effect at once).

use std::time::Duration;

use im_common::identity;
use im_common::ids::now_ms;
use im_common::proto::{
    Empty, Kick, LoginReply, LoginRequest, LogoutRequest, RegisterRequest, UserProfile,
    VerifyTokenReply, VerifyTokenRequest, event,
};
use im_common::store::users::{NewUser, Session, UserStore};
use im_common::validate::{self, MAX_NAME_BYTES};
use mprpc::{Context, Status};
use tracing::{debug, info};

use crate::auth::{Claims, TokenError};
use crate::notify;
use crate::state::Users;
use crate::throttle::{Attempt, client_addr};

/// The device of a login that names none.
pub(crate) const DEFAULT_DEVICE: &str = "default";

/// The one answer to a wrong name or a wrong password: which of the two is not told.
fn wrong_credentials() -> Status {
    Status::unauthenticated("wrong name or password")
}

pub(crate) async fn register(users: &Users, req: RegisterRequest) -> Result<UserProfile, Status> {
    validate::login_name(&req.name)?;
    validate::password(&req.password)?;
    let nickname = if req.nickname.trim().is_empty() {
        req.name.clone()
    } else {
        validate::text("nickname", &req.nickname, MAX_NAME_BYTES)?;
        req.nickname
    };
    // Spares the hashing for a name that is visibly taken; the unique key decides races.
    if users.sql.credentials(&req.name).await?.is_some() {
        return Err(Status::already_exists("user name already exists"));
    }
    let password_hash = users.passwords.hash(req.password).await?;
    let profile = users
        .sql
        .create_user(NewUser {
            name: req.name,
            password_hash,
            nickname,
        })
        .await?;
    metrics::counter!("mpim_user_registrations_total").increment(1);
    info!(user_id = profile.user_id, "user registered");
    Ok(profile)
}

pub(crate) async fn login(users: &Users, req: LoginRequest) -> Result<LoginReply, Status> {
    let device_id = device(req.device_id)?;
    let attempt = Attempt {
        name: &req.name,
        addr: client_addr(&req.client_addr),
    };
    let profile = authenticate(users, &attempt, &req.password).await?;
    open_session(users, profile, device_id).await
}

/// The device a login names, or [`DEFAULT_DEVICE`] when it names none.
fn device(device_id: String) -> Result<String, Status> {
    if device_id.is_empty() {
        return Ok(DEFAULT_DEVICE.to_owned());
    }
    validate::client_id("device_id", &device_id)?;
    Ok(device_id)
}

/// The profile of the account `attempt` names, when `password` is its password and the
/// guessing limits allow the attempt; every refusal is the same [`wrong_credentials`], and
/// the attempt is counted against the limits.
async fn authenticate(
    users: &Users,
    attempt: &Attempt<'_>,
    password: &str,
) -> Result<UserProfile, Status> {
    // Past a guessing limit: refused like a wrong password, before any password is checked.
    if !users.throttle.allows(attempt).await {
        metrics::counter!("mpim_user_logins_total", "outcome" => "throttled").increment(1);
        return Err(wrong_credentials());
    }
    // No stored password (nor name) is this long: refused without spending a hash on it.
    let profile = if password.len() > 128 || attempt.name.len() > 256 {
        None
    } else {
        let credentials = users.sql.credentials(attempt.name).await?;
        let hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let matches = users.passwords.verify(password.to_owned(), hash).await?;
        credentials.filter(|_| matches).map(|c| c.profile)
    };
    let Some(profile) = profile else {
        metrics::counter!("mpim_user_logins_total", "outcome" => "refused").increment(1);
        users.throttle.failed(attempt).await;
        return Err(wrong_credentials());
    };
    users.throttle.succeeded(attempt).await;
    Ok(profile)
}

/// A new session of `profile` on `device_id`: its row, and the token naming it.
async fn open_session(
    users: &Users,
    profile: UserProfile,
    device_id: String,
) -> Result<LoginReply, Status> {
    let now = now_ms();
    let iat = now.div_euclid(1000);
    // Rounded up, so that a token lives at least the configured lifetime.
    let exp = now
        .saturating_add(999)
        .div_euclid(1000)
        .saturating_add(users.tokens.ttl_secs);
    let session_id = format!("{:032x}", rand::random::<u128>());
    users
        .sql
        .create_session(Session {
            session_id: session_id.clone(),
            user_id: profile.user_id,
            device_id: device_id.clone(),
            created_at_ms: now,
            expires_at_ms: exp.saturating_mul(1000),
            revoked_at_ms: None,
        })
        .await?;
    let token = users.tokens.issue(&Claims {
        sub: profile.user_id.to_string(),
        sid: session_id.clone(),
        dev: device_id,
        iat,
        exp,
    })?;
    metrics::counter!("mpim_user_logins_total", "outcome" => "ok").increment(1);
    // The session id is a bearer secret of the session: not in logs at info.
    info!(user_id = profile.user_id, "logged in");
    debug!(user_id = profile.user_id, session_id, "session created");
    Ok(LoginReply {
        token,
        expires_at_ms: exp.saturating_mul(1000),
        profile: Some(profile),
        session_id,
    })
}

pub(crate) async fn verify_token(
    users: &Users,
    req: VerifyTokenRequest,
) -> Result<VerifyTokenReply, Status> {
    let now = now_ms();
    let claims = users.tokens.verify(&req.token, now.div_euclid(1000))?;
    let user_id = claims.user_id()?;
    let expires_at_ms = claims.exp.saturating_mul(1000);
    if !users.cache.session_active(&claims.sid, user_id).await {
        let session = users
            .sql
            .session(&claims.sid)
            .await?
            .ok_or_else(|| Status::unauthenticated("unknown session"))?;
        if session.user_id != user_id {
            return Err(TokenError::Invalid.into());
        }
        if session.revoked_at_ms.is_some() {
            return Err(Status::unauthenticated("session revoked"));
        }
        if session.expires_at_ms <= now {
            return Err(TokenError::Expired.into());
        }
        let remaining = u64::try_from(expires_at_ms.min(session.expires_at_ms) - now)
            .map_or(Duration::ZERO, Duration::from_millis);
        users
            .cache
            .set_session_active(&claims.sid, user_id, remaining)
            .await;
    }
    Ok(VerifyTokenReply {
        user_id,
        session_id: claims.sid,
        device_id: claims.dev,
        expires_at_ms,
    })
}

pub(crate) async fn logout(
    users: &Users,
    ctx: &Context,
    req: LogoutRequest,
) -> Result<Empty, Status> {
    let caller = identity::user(ctx)?;
    let session = if req.token.is_empty() {
        if caller.session.is_empty() {
            return Err(Status::invalid_argument(
                "no session to log out: give its token, or call with the session's metadata",
            ));
        }
        caller.session
    } else {
        // An expired token still names its session, which may be logged out.
        let claims = users.tokens.decode(&req.token)?;
        if claims.user_id()? != caller.id {
            return Err(Status::permission_denied(
                "the token belongs to another user",
            ));
        }
        claims.sid
    };
    if !users
        .sql
        .revoke_session(caller.id, &session, now_ms())
        .await?
    {
        return Err(Status::not_found("session not found"));
    }
    users.cache.set_session_revoked(&session).await;
    kick(users, caller.id, &session, "logout").await;
    info!(user_id = caller.id, "logged out");
    debug!(user_id = caller.id, session_id = session, "session revoked");
    Ok(Empty {})
}

/// Tells the gateways holding the user's connections to close the session's. Best effort: a
/// gateway that misses it still finds the session revoked at its next check.
async fn kick(users: &Users, user: u64, session: &str, reason: &str) {
    notify::publish(users, vec![user], "kick", |_| {
        event::Event::Kick(Kick {
            user_id: user,
            session_id: session.to_owned(),
            reason: reason.to_owned(),
        })
    })
    .await;
}
