//! Each legacy command as client-protocol requests to the dispatcher, and its reply line.

use im_proto::client::request::Command as Request;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Error, Login};
use im_proto::{
    CreateGroupRequest, DeviceKind, Empty, FriendRequestState, JoinPolicy, JoinRequest,
    RegisterRequest, SendFriendRequestRequest, SendGroupRequest, SendRequest,
};

use tokio::time::Instant;

use super::Legacy;
use super::format;
use super::parse::Command;
use super::seen::Seen;

/// ADDFRIEND's reply when both have asked: they are friends (the original's reply).
const FRIEND_ADDED: &str = "friend added";
/// ADDFRIEND's reply while the target has not asked back.
const REQUEST_SENT: &str = "friend request sent";
/// JOINGROUP's reply when the user is a member (the original's reply).
const JOINED: &str = "joined group";
/// JOINGROUP's reply when the group's admins must approve first.
const JOIN_REQUESTED: &str = "join request sent";
/// LOGOUT's reply; the connection stays open for another LOGIN.
const LOGGED_OUT: &str = "logout success";

/// The device every legacy login names: the original system knew one connection per user.
pub(crate) const DEVICE: &str = "legacy";

/// What a command produced: its reply (one line, or PULL's lines), and what to mark read.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) text: String,
    /// Lines in `text`, for the metrics.
    pub(crate) lines: u64,
    /// Conversations to mark read once `text` is written.
    pub(crate) marks: Vec<(String, u64)>,
}

impl Outcome {
    pub(crate) fn ok(detail: impl std::fmt::Display) -> Outcome {
        Outcome::line(format::ok(detail))
    }

    pub(crate) fn err(reason: &str) -> Outcome {
        Outcome::line(format::err(reason))
    }

    fn line(text: String) -> Outcome {
        Outcome {
            text,
            lines: 1,
            ..Outcome::default()
        }
    }
}

impl From<Result<Outcome, Error>> for Outcome {
    fn from(result: Result<Outcome, Error>) -> Outcome {
        result.unwrap_or_else(|error| Outcome::err(&error.message))
    }
}

impl Legacy<'_> {
    /// Runs one command.
    pub(super) async fn run(&mut self, command: Command) -> Outcome {
        let session = self.conn.session();
        match (&session, command.before_login()) {
            (None, false) => return Outcome::err(format::NOT_LOGIN),
            (Some(session), true) if command != Command::Ping => {
                return Outcome::err(&format!(
                    "already logged in as uid={}; LOGOUT first",
                    session.user
                ));
            }
            _ => {}
        }
        let result = match command {
            Command::Ping => Ok(Outcome::ok("PONG")),
            Command::Register { name, password } => self.register(name, password).await,
            Command::Login { name, password } => self.login(name, password).await,
            Command::Logout => self.logout().await,
            Command::Send { to, text } => {
                let request = Request::Send(SendRequest {
                    to_user_id: to,
                    client_msg_id: client_msg_id(),
                    body: text,
                });
                self.send(request, "msg_id").await
            }
            Command::SendGroup { group, text } => {
                let request = Request::SendGroup(SendGroupRequest {
                    group_id: group,
                    client_msg_id: client_msg_id(),
                    body: text,
                });
                self.send(request, "group_msg_id").await
            }
            Command::Pull => self.pull().await,
            Command::AddFriend { user } => self.add_friend(user).await,
            Command::GetFriends => self.friends().await,
            Command::CreateGroup { name, description } => {
                self.create_group(name, description).await
            }
            Command::JoinGroup { group } => self.join_group(group).await,
        };
        result.into()
    }

    /// Asks the dispatcher, as this connection.
    pub(super) async fn call(&mut self, command: Request) -> Result<Body, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let request = im_proto::client::Request {
            id,
            command: Some(command),
        };
        let reply = self.shared.handle(self.conn, request).await;
        match (reply.message.error, reply.message.body) {
            (Some(error), _) => Err(error),
            (None, Some(body)) => Ok(body),
            (None, None) => Err(unexpected()),
        }
    }

    /// An account, and a login into it: the original gateway logged a new user in, and its
    /// client takes `+OK uid=` as a login.
    async fn register(&mut self, name: String, password: String) -> Result<Outcome, Error> {
        let request = Request::Register(RegisterRequest {
            name: name.clone(),
            password: password.clone(),
            nickname: String::new(),
        });
        let Body::Profile(profile) = self.call(request).await? else {
            return Err(unexpected());
        };
        self.login(name, password).await.map_err(|error| Error {
            message: format!(
                "registered as uid={}, but not logged in: {}; LOGIN to go on",
                profile.user_id, error.message
            ),
            ..error
        })
    }

    async fn login(&mut self, name: String, password: String) -> Result<Outcome, Error> {
        let request = Request::Login(Login {
            name,
            password,
            device_id: DEVICE.to_owned(),
            device_kind: DeviceKind::Terminal as i32,
            ..Login::default()
        });
        let Body::Session(session) = self.call(request).await? else {
            return Err(unexpected());
        };
        self.login_by = None;
        // Without the list every conversation counts as behind: PULL shows more, never less.
        if let Ok(Body::Conversations(list)) = self.call(Request::ListConversations(Empty {})).await
        {
            self.seen.start(&list.conversations);
        }
        Ok(Outcome::ok(format!("uid={}", session.user_id)))
    }

    /// Ends the session and keeps the connection, logged out, for another LOGIN (as the
    /// original did). The connection leaves the registry before the session ends, so the
    /// session's end (a `Kicked` to its connections) does not close this one.
    async fn logout(&mut self) -> Result<Outcome, Error> {
        let Some(session) = self.conn.session() else {
            return Ok(Outcome::err(format::NOT_LOGIN));
        };
        crate::connection::release(self.shared, self.conn).await;
        self.conn.unauthenticate();
        self.seen = Seen::default();
        self.login_by = Some(Instant::now() + self.login_timeout);
        self.shared.logout(&session).await.map_err(|error| Error {
            message: format!(
                "logged out here, but the session may last until it expires: {}",
                error.message
            ),
            ..error
        })?;
        Ok(Outcome::ok(LOGGED_OUT))
    }

    /// SEND and SENDGROUP: `+OK <key>=<msg_id>` once the message is stored.
    async fn send(&mut self, request: Request, key: &str) -> Result<Outcome, Error> {
        let Body::Ack(ack) = self.call(request).await? else {
            return Err(unexpected());
        };
        self.seen.sent(&ack.conversation_id, ack.seq);
        Ok(Outcome::ok(format!("{key}={}", ack.msg_id)))
    }

    /// A friend request, which is a friendship once both users have asked: the user
    /// service accepts a pending request when its target asks back. Nothing is ever
    /// accepted here for the target.
    async fn add_friend(&mut self, user: u64) -> Result<Outcome, Error> {
        let request = Request::AddFriend(SendFriendRequestRequest {
            to_user_id: user,
            message: String::new(),
        });
        let request = match self.call(request).await {
            Ok(Body::FriendRequest(request)) => request,
            Ok(_) => return Err(unexpected()),
            Err(error) if error.code == Code::AlreadyExists as i32 => {
                return Ok(Outcome::ok(FRIEND_ADDED));
            }
            Err(error) => return Err(error),
        };
        if request.state != FriendRequestState::Accepted as i32 {
            return Ok(Outcome::ok(REQUEST_SENT));
        }
        self.shared
            .registry
            .befriend(request.from_user_id, request.to_user_id);
        Ok(Outcome::ok(FRIEND_ADDED))
    }

    async fn friends(&mut self) -> Result<Outcome, Error> {
        let Body::Profiles(profiles) = self.call(Request::ListFriends(Empty {})).await? else {
            return Err(unexpected());
        };
        let friends: Vec<String> = profiles
            .profiles
            .iter()
            .map(|p| p.user_id.to_string())
            .collect();
        Ok(Outcome::ok(format!("friends: {}", friends.join(","))))
    }

    async fn create_group(&mut self, name: String, description: String) -> Result<Outcome, Error> {
        let request = Request::CreateGroup(CreateGroupRequest {
            name,
            description,
            join_policy: JoinPolicy::Open as i32,
            member_ids: Vec::new(),
        });
        match self.call(request).await? {
            Body::Group(group) => Ok(Outcome::ok(format!("group_id={}", group.group_id))),
            _ => Err(unexpected()),
        }
    }

    async fn join_group(&mut self, group: u64) -> Result<Outcome, Error> {
        let request = Request::JoinGroup(JoinRequest {
            group_id: group,
            message: String::new(),
        });
        match self.call(request).await? {
            Body::Joined(joined) if joined.joined => Ok(Outcome::ok(JOINED)),
            Body::Joined(_) => Ok(Outcome::ok(JOIN_REQUESTED)),
            _ => Err(unexpected()),
        }
    }
}

/// A fresh client message id: each line is a new message (a resent line is sent again),
/// and ids must not repeat across connections or restarts.
fn client_msg_id() -> String {
    format!(
        "legacy-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// A reply of the wrong kind: a bug here, not the client's fault.
pub(super) fn unexpected() -> Error {
    tracing::warn!("unexpected reply to a legacy command");
    crate::wire::error(Code::Internal, "internal error", false)
}
