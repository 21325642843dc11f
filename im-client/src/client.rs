//! [`Client`]: one generic [`Client::call`] and a typed method per command.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Login, Logout, Ping, Session, Typing};
use im_proto::*;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::connection::{Call, Driver};
use crate::error::Error;
use crate::event::Events;
use crate::options::Options;
use crate::transport::Dialer;

/// What a call comes back with.
pub type Reply = Result<Body, Error>;

/// What the client knows of its connection and session.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Whether a connection to the gateway is up.
    pub connected: bool,
    /// The session of the last login (kept across reconnects), if any.
    pub session: Option<Session>,
}

/// Ends the connection task when the last handle goes.
#[derive(Debug)]
struct Owner(JoinHandle<()>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection to a gateway that stays up: it reconnects, resumes the session, resends
/// what was not acknowledged and syncs what was missed. Cheap to clone; the connection
/// closes when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), im_client::Error> {
/// use im_client::{Client, Event, Options};
///
/// let (client, mut events) = Client::connect(Options::new("127.0.0.1:6000")).await?;
/// let session = client.login("alice", "secret").await?;
/// let bob = client.search_user("bob").await?.profiles[0].user_id;
/// let ack = client.send(bob, "hello").await?;
/// println!("sent as seq {} of {}", ack.seq, ack.conversation_id);
/// while let Some(event) = events.recv().await {
///     if let Event::Message(message) = event {
///         println!("{}: {}", message.sender_id, message.body);
///     }
/// }
/// # let _ = session;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    calls: mpsc::Sender<Call>,
    state: watch::Receiver<State>,
    options: Arc<Options>,
    _owner: Arc<Owner>,
}

impl Client {
    /// Connects to `options.address` and starts the connection task (on the current tokio
    /// runtime).
    ///
    /// # Errors
    /// [`Error::Address`] for an address it cannot read, [`Error::Transport`] when the
    /// first connection fails or takes longer than `request_timeout` (later ones are
    /// retried with backoff).
    pub async fn connect(options: Options) -> Result<(Client, Events), Error> {
        let dialer = Dialer::new(&options)?;
        let transport = dialer.connect(options.request_timeout).await?;
        let (calls, calls_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(options.event_buffer.max(1));
        let (state_tx, state) = watch::channel(State::default());
        let driver = Driver::new(options.clone(), dialer, calls_rx, events_tx, state_tx);
        let task = tokio::spawn(driver.run(transport));
        let client = Client {
            calls,
            state,
            options: Arc::new(options),
            _owner: Arc::new(Owner(task)),
        };
        Ok((client, Events { rx: events_rx }))
    }

    /// The connection and session as they are now.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// The logged-in user's id, if any.
    pub fn user_id(&self) -> Option<u64> {
        self.state.borrow().session.as_ref().map(|s| s.user_id)
    }

    /// Sends any command and waits for its reply. Sends, recalls and edits get a
    /// `client_msg_id` when they have none, wait in the outbox across reconnects and
    /// give up after `send_timeout`; other calls fail at once while disconnected and give
    /// up after `request_timeout`.
    ///
    /// # Errors
    /// [`Error::Server`] when the gateway refuses the command; [`Error::Disconnected`],
    /// [`Error::Timeout`], [`Error::OutboxFull`], [`Error::Closed`] otherwise.
    pub async fn call(&self, command: Command) -> Reply {
        let timeout = match command {
            Command::Send(_) | Command::SendGroup(_) | Command::Recall(_) | Command::Edit(_) => {
                self.options.send_timeout
            }
            _ => self.options.request_timeout,
        };
        let (reply, rx) = oneshot::channel();
        let call = Call { command, reply };
        within(timeout, async {
            self.calls.send(call).await.map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        })
        .await
    }

    /// Creates an account.
    ///
    /// # Errors
    /// As [`Client::call`]; `ALREADY_EXISTS` when the name is taken.
    pub async fn register(&self, name: &str, password: &str) -> Result<UserProfile, Error> {
        let request = RegisterRequest {
            name: name.into(),
            password: password.into(),
            nickname: String::new(),
        };
        expect!(self.call(Command::Register(request)).await, Profile)
    }

    /// Logs in with a name and password; the session is kept for resumes.
    ///
    /// # Errors
    /// As [`Client::call`]; `UNAUTHENTICATED` for a wrong name or password.
    pub async fn login(&self, name: &str, password: &str) -> Result<Session, Error> {
        let login = Login {
            name: name.into(),
            password: password.into(),
            ..self.login_template()
        };
        expect!(self.call(Command::Login(login)).await, Session)
    }

    /// Logs in with the token of an earlier session.
    ///
    /// # Errors
    /// As [`Client::call`]; `UNAUTHENTICATED` for an expired or revoked token.
    pub async fn login_with_token(&self, token: &str) -> Result<Session, Error> {
        let login = Login {
            token: token.into(),
            ..self.login_template()
        };
        expect!(self.call(Command::Login(login)).await, Session)
    }

    fn login_template(&self) -> Login {
        Login {
            device_id: self.options.device_id.clone(),
            device_kind: self.options.device_kind.into(),
            ..Login::default()
        }
    }

    /// Ends the session (every connection on it closes; sends still waiting fail).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn logout(&self) -> Result<(), Error> {
        expect!(self.call(Command::Logout(Logout {})).await, Ok).map(drop)
    }

    /// Sends `body` to a friend; resolves with the ack (after a reconnect, if one came in
    /// between). The message also comes as an [`Event::Message`](crate::Event) in order.
    ///
    /// # Errors
    /// As [`Client::call`]; `PERMISSION_DENIED` when not friends or blocked.
    pub async fn send(&self, to_user_id: u64, body: &str) -> Result<SendAck, Error> {
        let request = SendRequest {
            to_user_id,
            client_msg_id: String::new(),
            body: body.into(),
        };
        expect!(self.call(Command::Send(request)).await, Ack)
    }

    /// Sends `body` to a group; as [`Client::send`].
    ///
    /// # Errors
    /// As [`Client::call`]; `PERMISSION_DENIED` when not a member or muted.
    pub async fn send_group(&self, group_id: u64, body: &str) -> Result<SendAck, Error> {
        let request = SendGroupRequest {
            group_id,
            client_msg_id: String::new(),
            body: body.into(),
        };
        expect!(self.call(Command::SendGroup(request)).await, Ack)
    }

    /// Up to `limit` entries of a conversation after `after_seq` (history; the events
    /// stream is not affected).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn sync(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<SyncReply, Error> {
        let request = SyncRequest {
            conversation_id: conversation_id.into(),
            after_seq,
            limit,
        };
        expect!(self.call(Command::Sync(request)).await, Synced)
    }

    /// Every conversation with its last message, last seq, read seq and unread count.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_conversations(&self) -> Result<Conversations, Error> {
        expect!(
            self.call(Command::ListConversations(Empty {})).await,
            Conversations
        )
    }

    /// Marks a conversation read up to `seq`; returns the read seq after the call.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<u64, Error> {
        let request = MarkReadRequest {
            conversation_id: conversation_id.into(),
            seq,
        };
        expect!(self.call(Command::MarkRead(request)).await, Read).map(|r| r.read_seq)
    }

    /// Takes back an own message; the ack is the recall's own entry.
    ///
    /// # Errors
    /// As [`Client::call`]; `FAILED_PRECONDITION` once the recall window passed.
    pub async fn recall(&self, msg_id: u64) -> Result<SendAck, Error> {
        let request = RecallRequest {
            msg_id,
            client_msg_id: String::new(),
        };
        expect!(self.call(Command::Recall(request)).await, Ack)
    }

    /// Replaces the text of an own message.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn edit(&self, msg_id: u64, body: &str) -> Result<SendAck, Error> {
        let request = EditRequest {
            msg_id,
            client_msg_id: String::new(),
            body: body.into(),
        };
        expect!(self.call(Command::Edit(request)).await, Ack)
    }

    /// Tells the others of a conversation that this user is typing.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn typing(&self, conversation_id: &str) -> Result<(), Error> {
        let typing = Typing {
            conversation_id: conversation_id.into(),
        };
        expect!(self.call(Command::Typing(typing)).await, Ok).map(drop)
    }

    /// The gateway's clock, in milliseconds since the epoch.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn ping(&self) -> Result<i64, Error> {
        expect!(self.call(Command::Ping(Ping {})).await, Pong).map(|p| p.server_time_ms)
    }
}

/// `future`, or [`Error::Timeout`] after `timeout`.
async fn within(timeout: Duration, future: impl Future<Output = Reply>) -> Reply {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or(Err(Error::Timeout(timeout)))
}
