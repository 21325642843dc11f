//! Before the load: users registered and logged in, each on its own connection, made
//! friends in pairs or gathered into one group. Setup is timed but not measured.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Login, Ping, Request};
use im_proto::{
    CreateGroupRequest, DeviceKind, GroupUsers, JoinPolicy, RegisterRequest,
    SendFriendRequestRequest,
};

use super::link::{Endpoint, Link};

/// How long any one setup request may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How often connections waiting for the rest of setup ping (the gateway closes a
/// connection idle for 90 s, and registering thousands of users takes minutes).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Members named in one CreateGroup or Invite request.
const MEMBERS_PER_REQUEST: usize = 500;

/// What every connection of a run shares.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Source addresses to spread connections over (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
    /// Start of every user name and device id of this run.
    pub prefix: String,
    /// Every user's password.
    pub password: String,
    /// Connections set up at once.
    pub concurrency: usize,
}

/// The gateway refused a request.
#[derive(Debug)]
pub struct Refused {
    /// Why, in the protocol's terms.
    pub code: Code,
    /// The gateway's words.
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.message)
    }
}

impl std::error::Error for Refused {}

/// Whether `err` is the gateway refusing with `code`.
pub fn refused_with(err: &anyhow::Error, code: Code) -> bool {
    err.downcast_ref::<Refused>()
        .is_some_and(|refused| refused.code == code)
}

/// A logged-in connection.
#[derive(Debug)]
pub struct Session {
    /// The connection.
    pub link: Link,
    /// Who is logged in on it.
    pub user_id: u64,
    /// The token of its session (for more devices of the same user).
    pub token: String,
    /// The last request id used.
    pub last_id: u64,
}

impl Session {
    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Sends `command` and returns the reply's body.
    ///
    /// # Errors
    /// [`Refused`] when the gateway says no; others when the connection fails.
    pub async fn request(&mut self, command: Command) -> anyhow::Result<Body> {
        let id = self.next_id();
        request(&mut self.link, id, command).await
    }
}

async fn request(link: &mut Link, id: u64, command: Command) -> anyhow::Result<Body> {
    let reply = link
        .call(
            &Request {
                id,
                command: Some(command),
            },
            CALL_TIMEOUT,
        )
        .await?;
    if let Some(error) = reply.error {
        return Err(Refused {
            code: Code::try_from(error.code).unwrap_or(Code::Unknown),
            message: error.message,
        }
        .into());
    }
    reply.body.context("a reply with neither error nor body")
}

/// How a connection logs in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Register user `n` of the run (taken names are fine), then log in with the password.
    New(usize),
    /// Log in with the token of an earlier login.
    Token(String),
}

impl Setup {
    /// Source address for connection `index`.
    fn source(&self, index: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()])
    }

    /// Opens connection `index` and logs it in.
    ///
    /// # Errors
    /// When the connection, the registration or the login fails.
    pub async fn open(&self, index: usize, auth: Auth) -> anyhow::Result<Session> {
        let mut link = self.endpoint.connect(self.source(index)).await?;
        let device_id = format!("{}-d{index}", self.prefix);
        let login = match auth {
            Auth::New(user) => {
                let name = format!("{}-{user}", self.prefix);
                let register = RegisterRequest {
                    name: name.clone(),
                    password: self.password.clone(),
                    nickname: String::new(),
                };
                match request(&mut link, 1, Command::Register(register)).await {
                    Ok(_) => {}
                    Err(err) if refused_with(&err, Code::AlreadyExists) => {}
                    Err(err) => return Err(err.context(format!("registering {name}"))),
                }
                Login {
                    name,
                    password: self.password.clone(),
                    device_id,
                    device_kind: DeviceKind::Desktop.into(),
                    ..Login::default()
                }
            }
            Auth::Token(token) => Login {
                token,
                device_id,
                device_kind: DeviceKind::Desktop.into(),
                ..Login::default()
            },
        };
        let body = request(&mut link, 2, Command::Login(login))
            .await
            .with_context(|| format!("logging in connection {index}"))?;
        let Body::Session(session) = body else {
            bail!("login answered with {body:?}");
        };
        Ok(Session {
            link,
            user_id: session.user_id,
            token: session.token,
            last_id: 2,
        })
    }

    /// Opens `count` connections, one new user each, at most [`Setup::concurrency`] at once;
    /// in index order. Those already open ping while the others are set up.
    ///
    /// # Errors
    /// The first connection that fails.
    pub async fn open_users(&self, count: usize) -> anyhow::Result<Vec<Session>> {
        let concurrency = self.concurrency.max(1);
        let batch = concurrency * 8;
        let mut sessions = Vec::with_capacity(count);
        let mut pinged = Instant::now();
        for first in (0..count).step_by(batch) {
            let opened: Vec<Session> = stream::iter(first..count.min(first + batch))
                .map(|index| self.open(index, Auth::New(index)))
                .buffered(concurrency)
                .try_collect()
                .await?;
            sessions.extend(opened);
            if pinged.elapsed() >= KEEPALIVE {
                keepalive(&mut sessions, concurrency).await?;
                pinged = Instant::now();
            }
            if count > batch {
                eprintln!("setup: {}/{count} logged in", sessions.len());
            }
        }
        Ok(sessions)
    }
}

/// Pings every session once, so that none is idle long enough to be closed.
///
/// # Errors
/// The first ping that fails.
pub async fn keepalive(sessions: &mut [Session], concurrency: usize) -> anyhow::Result<()> {
    stream::iter(sessions.iter_mut())
        .map(|session| session.request(Command::Ping(Ping {})))
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// Makes each pair `(sessions[2i], sessions[2i + 1])` friends: each asks the other, and the
/// second request accepts the first (already being friends is fine).
///
/// # Errors
/// The first request refused for another reason.
pub async fn befriend_pairs(sessions: &mut [Session], concurrency: usize) -> anyhow::Result<()> {
    stream::iter(sessions.chunks_mut(2))
        .map(|pair| async move {
            let [a, b] = pair else { return Ok(()) };
            let (a_id, b_id) = (a.user_id, b.user_id);
            ask(a, b_id).await?;
            ask(b, a_id).await
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

async fn ask(session: &mut Session, to_user_id: u64) -> anyhow::Result<()> {
    let command = Command::AddFriend(SendFriendRequestRequest {
        to_user_id,
        message: String::new(),
    });
    match session.request(command).await {
        Ok(_) => Ok(()),
        Err(err) if refused_with(&err, Code::AlreadyExists) => Ok(()),
        Err(err) => Err(err.context(format!("friend request to {to_user_id}"))),
    }
}

/// Creates a group owned by `owner` with every one of `members` in it; its id.
///
/// # Errors
/// When the gateway refuses.
pub async fn create_group(owner: &mut Session, name: &str, members: &[u64]) -> anyhow::Result<u64> {
    let mut chunks = members.chunks(MEMBERS_PER_REQUEST);
    let first = chunks.next().unwrap_or_default().to_vec();
    let body = owner
        .request(Command::CreateGroup(CreateGroupRequest {
            name: name.into(),
            description: String::new(),
            join_policy: JoinPolicy::default().into(),
            member_ids: first,
        }))
        .await
        .context("creating the group")?;
    let Body::Group(group) = body else {
        bail!("CreateGroup answered with {body:?}");
    };
    for chunk in chunks {
        owner
            .request(Command::Invite(GroupUsers {
                group_id: group.group_id,
                user_ids: chunk.to_vec(),
            }))
            .await
            .context("inviting members")?;
    }
    Ok(group.group_id)
}
