//! Passwords and tokens.
//!
//! - Passwords are hashed with argon2id at the configured work factor, on the blocking
//!   thread pool (a hash takes tens of milliseconds of CPU and ~19 MiB by default), at most
//!   as many at once as the machine has cores. A stored hash carries its own parameters, so
//!   raising the work factor does not lock anyone out.
//! - Tokens are HS256 JWTs with the claims `sub` (user id, decimal), `sid` (session id),
//!   `dev` (device id), `iat` and `exp` (seconds). A token is only half of a login: the
//!   session it names must also exist and not be revoked, which `VerifyToken` checks.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use mprpc::Status;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// The secret used when none is configured. It is public (it is in this source), so a
/// service refuses to start with it unless `[auth] dev = true`.
pub const DEV_SECRET: &str = "mpim-development-secret-never-use-it-in-production";

/// Shortest configured secret, in bytes (HS256 keys should be at least the hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Passwords, tokens and their work factors (`[auth]`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The HS256 key tokens are signed with, at least 32 bytes; every instance of the
    /// service shares it. Default: a built-in development secret, refused unless `dev`.
    pub jwt_secret: String,
    /// Allows the built-in development secret. Default false.
    pub dev: bool,
    /// How long a token (and its session) is valid, in seconds. Default 604800 (7 days).
    pub token_ttl_secs: u64,
    /// Argon2id memory cost in KiB. Default 19456 (19 MiB).
    pub argon2_memory_kib: u32,
    /// Argon2id passes. Default 2.
    pub argon2_iterations: u32,
    /// Argon2id lanes. Default 1.
    pub argon2_parallelism: u32,
    /// Failed logins for one account name within the window after which further attempts
    /// for that name are refused (with the wrong-password error) until the window ends.
    /// Default 5; 0 disables the limit.
    pub login_max_failures_per_name: u64,
    /// The same per client address (as the gateway reports it), across names. Default 20;
    /// 0 disables the limit.
    pub login_max_failures_per_addr: u64,
    /// The window failed logins are counted in, in seconds, from the first failure.
    /// Default 900 (15 minutes).
    pub login_failure_window_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            jwt_secret: DEV_SECRET.to_owned(),
            dev: false,
            token_ttl_secs: 7 * 24 * 3600,
            argon2_memory_kib: Params::DEFAULT_M_COST,
            argon2_iterations: Params::DEFAULT_T_COST,
            argon2_parallelism: Params::DEFAULT_P_COST,
            login_max_failures_per_name: 5,
            login_max_failures_per_addr: 20,
            login_failure_window_secs: 900,
        }
    }
}

// By hand, so that the secret never reaches a log.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &"<redacted>")
            .field("dev", &self.dev)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("argon2_memory_kib", &self.argon2_memory_kib)
            .field("argon2_iterations", &self.argon2_iterations)
            .field("argon2_parallelism", &self.argon2_parallelism)
            .field(
                "login_max_failures_per_name",
                &self.login_max_failures_per_name,
            )
            .field(
                "login_max_failures_per_addr",
                &self.login_max_failures_per_addr,
            )
            .field("login_failure_window_secs", &self.login_failure_window_secs)
            .finish()
    }
}

/// Why [`AuthSettings`] cannot be used; each names its key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The built-in development secret, without `dev = true`.
    #[error(
        "auth.jwt_secret: the built-in development secret is refused; set a secret of at \
         least {MIN_SECRET_BYTES} bytes (or auth.dev = true on a development machine)"
    )]
    DevSecret,
    /// A configured secret that is too short.
    #[error("auth.jwt_secret: {len} bytes, fewer than the {MIN_SECRET_BYTES} required")]
    ShortSecret {
        /// Its length.
        len: usize,
    },
    /// A token lifetime of zero or beyond any sensible date.
    #[error("auth.token_ttl_secs: {0} is not between 1 and 31536000 (a year)")]
    TokenTtl(u64),
    /// Argon2 parameters out of range.
    #[error("auth.argon2_*: {0}")]
    Argon2(String),
}

impl AuthSettings {
    /// Checks the secret, the token lifetime and the argon2 parameters.
    ///
    /// # Errors
    /// [`SettingsError`] naming the key at fault.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.params()?;
        if self.jwt_secret == DEV_SECRET {
            if !self.dev {
                return Err(SettingsError::DevSecret);
            }
        } else if self.jwt_secret.len() < MIN_SECRET_BYTES {
            return Err(SettingsError::ShortSecret {
                len: self.jwt_secret.len(),
            });
        }
        if !(1..=365 * 24 * 3600).contains(&self.token_ttl_secs) {
            return Err(SettingsError::TokenTtl(self.token_ttl_secs));
        }
        Ok(())
    }

    fn params(&self) -> Result<Params, SettingsError> {
        Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
        .map_err(|err| SettingsError::Argon2(err.to_string()))
    }
}

/// Argon2id hashing on the blocking pool, bounded.
pub(crate) struct Passwords {
    argon2: Argon2<'static>,
    permits: Semaphore,
    /// A hash of nothing, verified against when the name is unknown so that a wrong name
    /// costs as long as a wrong password.
    dummy: OnceLock<String>,
}

impl Passwords {
    pub(crate) fn new(settings: &AuthSettings) -> Result<Passwords, SettingsError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Passwords {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, settings.params()?),
            permits: Semaphore::new(cores),
            dummy: OnceLock::new(),
        })
    }

    /// The PHC string of `password` with a fresh random salt.
    pub(crate) async fn hash(self: &Arc<Self>, password: String) -> Result<String, Status> {
        let _permit = self.permits.acquire().await.map_err(|_| busy())?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.hash_now(&password))
            .await
            .map_err(|_| busy())?
    }

    /// Whether `password` matches `hash`; with no hash (an unknown user) the same work is
    /// done against a dummy and the answer is false.
    pub(crate) async fn verify(
        self: &Arc<Self>,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, Status> {
        let _permit = self.permits.acquire().await.map_err(|_| busy())?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = match hash {
                Some(hash) => hash,
                None => this.dummy()?.clone(),
            };
            let parsed = PasswordHash::new(&hash).map_err(|err| {
                tracing::error!(cause = %err, "stored password hash does not parse");
                Status::internal("internal error")
            })?;
            let matches = this
                .argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(known && matches)
        })
        .await
        .map_err(|_| busy())?
    }

    fn hash_now(&self, password: &str) -> Result<String, Status> {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(internal)?;
        let hash = self
            .argon2
            .hash_password(password.as_bytes(), &salt)
            .map_err(internal)?;
        Ok(hash.to_string())
    }

    fn dummy(&self) -> Result<&String, Status> {
        if let Some(dummy) = self.dummy.get() {
            return Ok(dummy);
        }
        let hash = self.hash_now("")?;
        Ok(self.dummy.get_or_init(|| hash))
    }
}

fn busy() -> Status {
    Status::unavailable("password hashing unavailable")
}

fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(cause = %err, "password hashing failed");
    Status::internal("internal error")
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, in decimal.
    pub sub: String,
    /// The session id.
    pub sid: String,
    /// The device id.
    pub dev: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Well signed but past its `exp`.
    Expired,
    /// Not a token this service signed.
    Invalid,
}

impl From<TokenError> for Status {
    fn from(err: TokenError) -> Status {
        match err {
            TokenError::Expired => Status::unauthenticated("token expired"),
            TokenError::Invalid => Status::unauthenticated("invalid token"),
        }
    }
}

/// Signs and checks HS256 tokens.
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub(crate) ttl_secs: i64,
}

impl Tokens {
    pub(crate) fn new(settings: &AuthSettings) -> Tokens {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        // Expiry is checked in `verify` against the caller's clock reading, with no leeway.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(settings.jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(settings.jwt_secret.as_bytes()),
            validation,
            ttl_secs: i64::try_from(settings.token_ttl_secs).unwrap_or(i64::MAX),
        }
    }

    /// A signed token for `claims`.
    pub(crate) fn issue(&self, claims: &Claims) -> Result<String, Status> {
        let header = Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|err| {
            tracing::error!(cause = %err, "token signing failed");
            Status::internal("internal error")
        })
    }

    /// The claims of `token` if it is signed with this key and unexpired at `now_secs`.
    pub(crate) fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        let claims = self.decode(token)?;
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The claims of a token signed with this key, expired or not.
    pub(crate) fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| TokenError::Invalid)
    }
}

impl Claims {
    /// The user id `sub` names.
    pub(crate) fn user_id(&self) -> Result<u64, TokenError> {
        self.sub
            .parse::<u64>()
            .ok()
            .filter(|&id| id != 0)
            .ok_or(TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            jwt_secret: secret.to_owned(),
            token_ttl_secs: 1,
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..AuthSettings::default()
        }
    }

    #[test]
    fn secrets_are_checked() {
        let dev = AuthSettings::default();
        let err = dev.validate().unwrap_err();
        assert!(err.to_string().starts_with("auth.jwt_secret:"), "{err}");
        assert!(matches!(err, SettingsError::DevSecret));
        assert!(AuthSettings { dev: true, ..dev }.validate().is_ok());
        let err = settings("short").validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "auth.jwt_secret: 5 bytes, fewer than the 32 required"
        );
        assert!(settings(&"k".repeat(32)).validate().is_ok());
        let zero_ttl = AuthSettings {
            token_ttl_secs: 0,
            ..settings(&"k".repeat(32))
        };
        assert!(zero_ttl.validate().is_err());
        let tiny = AuthSettings {
            argon2_memory_kib: 1,
            ..settings(&"k".repeat(32))
        };
        assert!(
            tiny.validate()
                .unwrap_err()
                .to_string()
                .starts_with("auth.argon2_")
        );
        assert!(!format!("{:?}", settings("top-secret")).contains("top-secret"));
    }

    #[test]
    fn tokens_expire_after_their_ttl() {
        let tokens = Tokens::new(&settings(&"k".repeat(32)));
        let claims = Claims {
            sub: "7".into(),
            sid: "s".into(),
            dev: "d".into(),
            iat: 1_000,
            exp: 1_000 + tokens.ttl_secs,
        };
        let token = tokens.issue(&claims).unwrap();
        assert_eq!(tokens.verify(&token, 1_000), Ok(claims.clone()));
        assert_eq!(tokens.verify(&token, 1_001), Err(TokenError::Expired));
        assert_eq!(tokens.decode(&token), Ok(claims));

        let other = Tokens::new(&settings(&"x".repeat(32)));
        assert_eq!(other.verify(&token, 1_000), Err(TokenError::Invalid));
        let mut tampered = token.clone();
        tampered.insert(token.len() / 2, 'A');
        assert_eq!(tokens.verify(&tampered, 1_000), Err(TokenError::Invalid));
        assert_eq!(
            tokens.verify("not a token", 1_000),
            Err(TokenError::Invalid)
        );
    }

    #[tokio::test]
    async fn passwords_verify_and_unknown_users_never_match() {
        let passwords = Arc::new(Passwords::new(&settings(&"k".repeat(32))).unwrap());
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        let again = passwords.hash("correct horse".into()).await.unwrap();
        assert_ne!(hash, again, "salts differ");
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!passwords.verify(String::new(), None).await.unwrap());
    }
}
