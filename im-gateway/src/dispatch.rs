//! The one dispatcher: every command of `proto/client.proto`, whatever the transport, is
//! answered here, mostly by one call to the service that owns it, made for the session's
//! user (`identity::for_user`).

use std::sync::Arc;

use im_common::identity;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Error, Pong, Request, ServerMessage};
use im_proto::{FriendRequestState, Statuses, UserIds};
use mprpc::CallOptions;

use crate::Shared;
use crate::registry::{Conn, Session};
use crate::wire;

/// The error a request with id 0 gets.
const ID_ZERO: &str = "request id 0 is reserved for pushes: number requests from 1";

/// A reply, and whether the connection closes after it is written.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) message: ServerMessage,
    pub(crate) close: bool,
}

/// What a command handler returns.
pub(crate) type Handled = Result<Body, Error>;

/// Calls `$method` on `$client` with `$request` and wraps its reply in `$body`.
macro_rules! call {
    ($options:expr, $client:expr, $method:ident, $request:expr, $body:path) => {
        $client
            .$method(&$request, $options)
            .await
            .map($body)
            .map_err(|err| crate::dispatch::service_error(&err))
    };
}
pub(crate) use call;

/// The client-facing error of a failed service call (logged here when it is the
/// gateway's or the service's fault).
pub(crate) fn service_error(err: &mprpc::Error) -> Error {
    if matches!(
        err.code(),
        mprpc::Code::Internal | mprpc::Code::Unavailable | mprpc::Code::DeadlineExceeded
    ) {
        tracing::warn!(cause = %err, "service call failed");
    }
    wire::rpc_error(err)
}

impl Shared {
    /// Answers one request of `conn`.
    pub(crate) async fn handle(&self, conn: &Arc<Conn>, request: Request) -> Reply {
        let id = request.id;
        if id == 0 {
            // Its reply would carry id 0 and read as a push: the request is not carried
            // out, and the error (id 0, like every protocol error) says why.
            return failed(0, Code::InvalidArgument, ID_ZERO);
        }
        let Some(command) = request.command else {
            return failed(id, Code::Unimplemented, "unknown command");
        };
        let session = conn.session();
        let result = match (command, session) {
            (Command::Ping(_), _) => Ok(Body::Pong(Pong {
                server_time_ms: im_common::ids::now_ms(),
            })),
            (Command::Register(register), _) => {
                let options = self.options();
                call!(
                    &options,
                    self.services.user,
                    register_with,
                    register,
                    Body::Profile
                )
            }
            (Command::Login(login), _) => Box::pin(self.login(conn, login)).await,
            (Command::Resume(resume), _) => Box::pin(self.resume(conn, resume)).await,
            (_, None) => Err(wire::error(Code::Unauthenticated, "log in first", false)),
            (Command::Logout(_), Some(session)) => {
                let reply = Box::pin(self.logout(&session)).await;
                let close = reply.is_ok();
                return Reply {
                    message: answer(id, reply),
                    close,
                };
            }
            (command, Some(session)) => Box::pin(self.command(conn, &session, command)).await,
        };
        Reply {
            message: answer(id, result),
            close: false,
        }
    }

    /// Call options with the gateway's timeout, acting for no user.
    pub(crate) fn options(&self) -> CallOptions {
        CallOptions::default().timeout(self.settings.call_timeout())
    }

    /// Call options acting for `session`'s user, device and session.
    pub(crate) fn options_for(&self, session: &Session) -> CallOptions {
        identity::for_user(self.options(), &session.identity())
    }

    /// Commands of an authenticated connection.
    async fn command(&self, conn: &Arc<Conn>, session: &Session, command: Command) -> Handled {
        let o = &self.options_for(session);
        let (user, message, group) = (
            &self.services.user,
            &self.services.message,
            &self.services.group,
        );
        match command {
            Command::Send(r) => call!(o, message, send_with, r, Body::Ack),
            Command::SendGroup(r) => call!(o, message, send_group_with, r, Body::Ack),
            Command::Sync(r) => call!(o, message, sync_with, r, Body::Synced),
            Command::ListConversations(r) => {
                call!(o, message, list_conversations_with, r, Body::Conversations)
            }
            Command::MarkRead(r) => self.mark_read(conn, session, r).await,
            Command::Recall(r) => call!(o, message, recall_with, r, Body::Ack),
            Command::Edit(r) => call!(o, message, edit_with, r, Body::Ack),
            Command::Typing(r) => self.typing(conn, session, r).await,
            Command::GetProfile(r) => call!(o, user, get_profile_with, r, Body::Profile),
            Command::UpdateProfile(r) => call!(o, user, update_profile_with, r, Body::Profile),
            Command::GetProfiles(r) => call!(o, user, get_profiles_with, r, Body::Profiles),
            Command::SearchUser(r) => call!(o, user, search_user_with, r, Body::Profiles),
            Command::AddFriend(r) => {
                call!(o, user, send_friend_request_with, r, Body::FriendRequest)
            }
            Command::RespondFriend(r) => {
                let reply = call!(o, user, respond_friend_request_with, r, Body::FriendRequest)?;
                if let Body::FriendRequest(request) = &reply {
                    if request.state == FriendRequestState::Accepted as i32 {
                        self.registry
                            .befriend(request.from_user_id, request.to_user_id);
                    }
                }
                Ok(reply)
            }
            Command::ListFriendRequests(r) => {
                call!(o, user, list_friend_requests_with, r, Body::FriendRequests)
            }
            Command::RemoveFriend(r) => {
                let friend = r.user_id;
                let reply = call!(o, user, remove_friend_with, r, Body::Ok)?;
                self.registry.unfriend(session.user, friend);
                Ok(reply)
            }
            Command::ListFriends(r) => call!(o, user, list_friends_with, r, Body::Profiles),
            Command::Block(r) => call!(o, user, block_with, r, Body::Ok),
            Command::Unblock(r) => call!(o, user, unblock_with, r, Body::Ok),
            Command::ListBlocked(r) => call!(o, user, list_blocked_with, r, Body::UserIds),
            Command::QueryStatus(r) => self.query_status(session, r).await,
            Command::CreateGroup(r) => call!(o, group, create_with, r, Body::Group),
            Command::Invite(r) => call!(o, group, invite_with, r, Body::UserIds),
            Command::JoinGroup(r) => call!(o, group, join_with, r, Body::Joined),
            Command::ListJoinRequests(r) => {
                call!(o, group, list_join_requests_with, r, Body::JoinRequests)
            }
            Command::RespondJoin(r) => call!(o, group, respond_join_with, r, Body::Ok),
            Command::LeaveGroup(r) => call!(o, group, leave_with, r, Body::Ok),
            Command::Kick(r) => call!(o, group, kick_with, r, Body::Ok),
            Command::SetRole(r) => call!(o, group, set_role_with, r, Body::Ok),
            Command::Mute(r) => call!(o, group, mute_with, r, Body::Ok),
            Command::Unmute(r) => call!(o, group, unmute_with, r, Body::Ok),
            Command::MuteAll(r) => call!(o, group, mute_all_with, r, Body::Ok),
            Command::Members(r) => call!(o, group, members_with, r, Body::Members),
            Command::MyGroups(r) => call!(o, group, my_groups_with, r, Body::Groups),
            Command::GroupInfo(r) => call!(o, group, info_with, r, Body::Group),
            Command::UpdateGroup(r) => call!(o, group, update_info_with, r, Body::Group),
            Command::DismissGroup(r) => call!(o, group, dismiss_with, r, Body::Ok),
            // Answered in `handle`, before authentication is looked at.
            Command::Ping(_)
            | Command::Register(_)
            | Command::Login(_)
            | Command::Resume(_)
            | Command::Logout(_) => Err(wire::error(Code::Internal, "internal error", false)),
        }
    }
}

impl Shared {
    /// The status of those of `request`'s users whose status the session's user may see
    /// (the user service decides); the others are left out of the reply.
    async fn query_status(&self, session: &Session, request: UserIds) -> Handled {
        let user = &self.services.user;
        let visible = user
            .status_visible_with(&request, &self.options_for(session))
            .await
            .map_err(|err| service_error(&err))?;
        if visible.user_ids.is_empty() {
            return Ok(Body::Statuses(Statuses::default()));
        }
        // As the gateway itself: presence answers no user directly.
        let presence = &self.services.presence;
        call!(
            &self.options(),
            presence,
            query_status_with,
            visible,
            Body::Statuses
        )
    }
}

/// The reply to request `id`.
pub(crate) fn answer(id: u64, result: Handled) -> ServerMessage {
    match result {
        Ok(body) => ServerMessage {
            id,
            error: None,
            body: Some(body),
        },
        Err(error) => wire::failure(id, error),
    }
}

fn failed(id: u64, code: Code, message: &str) -> Reply {
    Reply {
        message: wire::failure(id, wire::error(code, message, false)),
        close: false,
    }
}
