//! Login, Resume and Logout: how a connection gets its session, and what the gateway does
//! then (registry, route, friend list).

use std::net::IpAddr;
use std::sync::Arc;

use im_proto::client::server_message::Body;
use im_proto::client::{Behind, Code, Login, Resume, Resumed, Session as SessionReply};
use im_proto::{
    DeviceKind, Empty, LoginRequest, LogoutRequest, UserId, UserProfile, VerifyTokenRequest,
};
use tracing::warn;

use crate::Shared;
use crate::dispatch::{Handled, service_error};
use crate::registry::{Conn, Session};
use crate::{expiry, wire};

/// Who a token or password proved the caller to be.
struct Proven {
    user: u64,
    token: String,
    expires_at_ms: i64,
    session: String,
    device: String,
    profile: Option<UserProfile>,
}

impl Shared {
    /// The address a connection from `peer` counts as for password-guessing limits:
    /// `forwarded` (what a trusted balancer says) when `peer` is one of
    /// `trusted_proxies`, else `peer` itself.
    pub(crate) fn client_addr(&self, peer: IpAddr, forwarded: Option<IpAddr>) -> Option<IpAddr> {
        client_addr(&self.settings.trusted_proxies, peer, forwarded)
    }

    pub(crate) async fn login(&self, conn: &Arc<Conn>, login: Login) -> Handled {
        already(conn)?;
        let kind = DeviceKind::try_from(login.device_kind).unwrap_or_default();
        let proven = if login.token.is_empty() {
            let device = if login.device_id.is_empty() {
                format!("dev-{:016x}", rand::random::<u64>())
            } else {
                login.device_id
            };
            let request = LoginRequest {
                name: login.name,
                password: login.password,
                device_id: device.clone(),
                // Empty when unknown (a TCP client behind a trusted balancer): im-user
                // then limits guessing per account name only.
                client_addr: conn.client.map(|ip| ip.to_string()).unwrap_or_default(),
            };
            let reply = self
                .services
                .user
                .login_with(&request, &self.options())
                .await
                .map_err(|err| service_error(&err))?;
            Proven {
                user: reply.profile.as_ref().map_or(0, |p| p.user_id),
                token: reply.token,
                expires_at_ms: reply.expires_at_ms,
                session: reply.session_id,
                device,
                profile: reply.profile,
            }
        } else {
            self.verify(login.token, login.device_id).await?
        };
        let (session, _) = self.start(conn, proven, kind).await?;
        Ok(Body::Session(session))
    }

    pub(crate) async fn resume(&self, conn: &Arc<Conn>, resume: Resume) -> Handled {
        already(conn)?;
        for cursor in &resume.cursors {
            im_common::ids::ConversationId::parse(&cursor.conversation_id)
                .map_err(|status| wire::error(Code::InvalidArgument, status.message(), false))?;
        }
        let kind = DeviceKind::try_from(resume.device_kind).unwrap_or_default();
        let proven = self.verify(resume.token, String::new()).await?;
        let (session, started) = self.start(conn, proven, kind).await?;
        let options = self.options_for(&started);
        let conversations = self
            .services
            .message
            .list_conversations_with(&Empty {}, &options)
            .await
            .map_err(|err| service_error(&err))?;
        let behind = conversations
            .conversations
            .into_iter()
            .filter_map(|c| {
                let after_seq = resume
                    .cursors
                    .iter()
                    .find(|cursor| cursor.conversation_id == c.conversation_id)
                    .map_or(0, |cursor| cursor.last_seq);
                (c.last_seq > after_seq).then_some(Behind {
                    conversation_id: c.conversation_id,
                    after_seq,
                    last_seq: c.last_seq,
                })
            })
            .collect();
        Ok(Body::Resumed(Resumed {
            session: Some(session),
            behind,
        }))
    }

    pub(crate) async fn logout(&self, session: &Session) -> Handled {
        // An empty token revokes the caller's own session, named in the call's metadata.
        let request = LogoutRequest {
            token: String::new(),
        };
        self.services
            .user
            .logout_with(&request, &self.options_for(session))
            .await
            .map_err(|err| service_error(&err))?;
        Ok(Body::Ok(Empty {}))
    }

    /// Checks a token; the device is the session's (or `device` for a session that names
    /// none).
    async fn verify(
        &self,
        token: String,
        device: String,
    ) -> Result<Proven, im_proto::client::Error> {
        let reply = self
            .services
            .user
            .verify_token_with(
                &VerifyTokenRequest {
                    token: token.clone(),
                },
                &self.options(),
            )
            .await
            .map_err(|err| service_error(&err))?;
        let device = if !reply.device_id.is_empty() {
            reply.device_id
        } else if !device.is_empty() {
            device
        } else {
            format!("dev-{:016x}", rand::random::<u64>())
        };
        Ok(Proven {
            user: reply.user_id,
            token,
            expires_at_ms: reply.expires_at_ms,
            session: reply.session_id,
            device,
            profile: None,
        })
    }

    /// Makes `conn` the proven user's: registry, route, friend list, expiry; the Session
    /// reply. When the route cannot be bound the login fails and `conn` stays logged out:
    /// pushes would not find it.
    async fn start(
        &self,
        conn: &Arc<Conn>,
        proven: Proven,
        kind: DeviceKind,
    ) -> Result<(SessionReply, Arc<Session>), im_proto::client::Error> {
        let session = Arc::new(Session {
            user: proven.user,
            device: proven.device,
            session: proven.session,
            kind,
            expires: expiry::deadline(proven.expires_at_ms),
        });
        let profile = match proven.profile {
            Some(profile) => profile,
            None => self
                .services
                .user
                .get_profile_with(
                    &UserId {
                        user_id: session.user,
                    },
                    &self.options_for(&session),
                )
                .await
                .map_err(|err| service_error(&err))?,
        };
        if !conn.authenticate(session.clone()) {
            return Err(logged_in());
        }
        // In the registry before the bind: a lane unbinding this device's previous
        // connection then sees this one and keeps the route.
        if self.registry.add(session.user, conn.clone()) {
            self.load_friends(&session).await;
        }
        if let Err(err) = self
            .lanes
            .bind(&self.id, session.user, &session.device, kind)
            .await
        {
            self.abandon(conn, &session).await;
            warn!(cause = %err, user_id = session.user, "route not bound: login failed");
            return Err(wire::error(
                Code::Unavailable,
                "cannot route messages to this connection now; log in again",
                true,
            ));
        }
        self.expiry.watch(conn, session.expires);
        let reply = SessionReply {
            user_id: session.user,
            token: proven.token,
            expires_at_ms: proven.expires_at_ms,
            session_id: session.session.clone(),
            device_id: session.device.clone(),
            profile: Some(profile),
        };
        Ok((reply, session))
    }

    /// Takes back a login whose route was not bound: out of the registry, the route
    /// unbound (a bind that timed out may have been made), the connection logged out.
    async fn abandon(&self, conn: &Arc<Conn>, session: &Session) {
        conn.unauthenticate();
        if self.registry.remove(session.user, conn.id) {
            self.registry.forget_friends(session.user);
        }
        self.lanes
            .unbind(session.user, session.device.clone())
            .await;
    }

    /// Loads the friend list that presence pushes follow (best effort: without it the
    /// user sees no presence changes until the next login).
    async fn load_friends(&self, session: &Session) {
        let options = self.options_for(session);
        match self
            .services
            .user
            .list_friends_with(&Empty {}, &options)
            .await
        {
            Ok(friends) => self.registry.set_friends(
                session.user,
                friends.profiles.iter().map(|p| p.user_id).collect(),
            ),
            Err(err) => warn!(cause = %err, user_id = session.user, "friends not loaded"),
        }
    }
}

fn already(conn: &Conn) -> Result<(), im_proto::client::Error> {
    match conn.session() {
        Some(_) => Err(logged_in()),
        None => Ok(()),
    }
}

fn logged_in() -> im_proto::client::Error {
    wire::error(
        Code::FailedPrecondition,
        "this connection is logged in already",
        false,
    )
}

fn client_addr(trusted: &[IpAddr], peer: IpAddr, forwarded: Option<IpAddr>) -> Option<IpAddr> {
    // An IPv4 client seen through an IPv6 socket counts as its IPv4 address.
    let peer = peer.to_canonical();
    if trusted.contains(&peer) {
        forwarded.map(|ip| ip.to_canonical())
    } else {
        Some(peer)
    }
}

#[cfg(test)]
mod client_addr_tests {
    use super::*;

    #[test]
    fn a_trusted_balancer_speaks_for_its_client_and_nobody_else_does() {
        let balancer: IpAddr = "10.0.0.2".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let trusted = [balancer];
        assert_eq!(client_addr(&trusted, client, None), Some(client));
        // A client cannot name another address for itself.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_addr(&trusted, client, Some(other)), Some(client));
        assert_eq!(client_addr(&trusted, balancer, Some(client)), Some(client));
        assert_eq!(client_addr(&trusted, balancer, None), None);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(client_addr(&[], mapped, None), Some(client));
    }
}
