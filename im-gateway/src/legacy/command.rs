//! Each legacy command as client-protocol requests to the dispatcher, and its reply line.

use im_proto::client::request::Command as Request;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Error, Login, Logout};
use im_proto::{
    CreateGroupRequest, DeviceKind, Empty, FriendRequestState, JoinPolicy, JoinRequest,
    RegisterRequest, SendFriendRequestRequest, SendGroupRequest, SendRequest,
};

use super::Legacy;
use super::format;
use super::parse::Command;

/// ADDFRIEND's reply when both have asked: they are friends (the original's reply).
const FRIEND_ADDED: &str = "friend added";
/// ADDFRIEND's reply while the target has not asked back.
const REQUEST_SENT: &str = "friend request sent";

/// The device every legacy login names: the original system knew one connection per user.
pub(crate) const DEVICE: &str = "legacy";

/// What a command produced: its reply (one line, or PULL's lines), and what follows.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) text: String,
    /// Lines in `text`, for the metrics.
    pub(crate) lines: u64,
    /// Conversations to mark read once `text` is written.
    pub(crate) marks: Vec<(String, u64)>,
    /// Close the connection after the reply.
    pub(crate) close: bool,
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
        if !command.before_login() && self.conn.session().is_none() {
            return Outcome::err("log in first");
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
                self.send(request).await
            }
            Command::SendGroup { group, text } => {
                let request = Request::SendGroup(SendGroupRequest {
                    group_id: group,
                    client_msg_id: client_msg_id(),
                    body: text,
                });
                self.send(request).await
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

    async fn register(&mut self, name: String, password: String) -> Result<Outcome, Error> {
        let request = Request::Register(RegisterRequest {
            name,
            password,
            nickname: String::new(),
        });
        match self.call(request).await? {
            Body::Profile(profile) => Ok(Outcome::ok(profile.user_id)),
            _ => Err(unexpected()),
        }
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
        // Without the list every conversation counts as behind: PULL shows more, never less.
        if let Ok(Body::Conversations(list)) = self.call(Request::ListConversations(Empty {})).await
        {
            self.seen.start(&list.conversations);
        }
        Ok(Outcome::ok(session.user_id))
    }

    async fn logout(&mut self) -> Result<Outcome, Error> {
        self.call(Request::Logout(Logout {})).await?;
        Ok(Outcome {
            close: true,
            ..Outcome::ok("")
        })
    }

    async fn send(&mut self, request: Request) -> Result<Outcome, Error> {
        let Body::Ack(ack) = self.call(request).await? else {
            return Err(unexpected());
        };
        self.seen.sent(&ack.conversation_id, ack.seq);
        Ok(Outcome::ok(ack.msg_id))
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
            .map(|p| format!("{}:{}", p.user_id, p.name))
            .collect();
        Ok(Outcome::ok(friends.join(" ")))
    }

    async fn create_group(&mut self, name: String, description: String) -> Result<Outcome, Error> {
        let request = Request::CreateGroup(CreateGroupRequest {
            name,
            description,
            join_policy: JoinPolicy::Open as i32,
            member_ids: Vec::new(),
        });
        match self.call(request).await? {
            Body::Group(group) => Ok(Outcome::ok(group.group_id)),
            _ => Err(unexpected()),
        }
    }

    async fn join_group(&mut self, group: u64) -> Result<Outcome, Error> {
        let request = Request::JoinGroup(JoinRequest {
            group_id: group,
            message: String::new(),
        });
        match self.call(request).await? {
            Body::Joined(joined) if joined.joined => Ok(Outcome::ok("")),
            Body::Joined(_) => Ok(Outcome::ok("pending")),
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
