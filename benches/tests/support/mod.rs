//! A stand-in gateway: a few dozen lines that speak the client protocol over TCP and
//! WebSocket with in-memory users, seqs and fan-out, and that can be told to push a message
//! twice or not at all, so that the bench's verdict is seen to catch both. (The real
//! gateway is measured by running im-bench against it; it cannot be asked to misbehave.)

#![allow(dead_code, unreachable_pub)]

// The TLS proxy and throwaway CA of the SDK's tests, shared rather than copied.
#[path = "../../../im-client/tests/support/tls.rs"]
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use benches::im::link::Endpoint;
use benches::im::modes::Load;
use benches::im::setup::Setup;
use futures::{SinkExt as _, StreamExt as _};
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Error, Pong, Request, ServerMessage, Session};
use im_proto::codec::Codec;
use im_proto::{ChatMessage, FriendRequest, GroupInfo, SendAck, UserIds, UserProfile};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::{FramedRead, FramedWrite};

/// What the stand-in does wrong on purpose.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Push every nth push twice.
    pub dup_every: Option<u64>,
    /// Leave out every nth push.
    pub drop_every: Option<u64>,
    /// Refuse every nth send as over the rate limit.
    pub refuse_every: Option<u64>,
}

#[derive(Default)]
struct State {
    names: HashMap<String, u64>,
    connections: HashMap<u64, Vec<(u64, mpsc::UnboundedSender<ServerMessage>)>>,
    seqs: HashMap<String, u64>,
    groups: HashMap<u64, Vec<u64>>,
    next_id: u64,
    pushes: u64,
    sends: u64,
}

pub struct Gateway {
    // Short critical sections with no await: parking_lot's mutex is right here.
    state: Mutex<State>,
    faults: Faults,
}

impl Gateway {
    /// Starts the stand-in; its TCP and WebSocket addresses.
    pub async fn start(faults: Faults) -> (SocketAddr, SocketAddr) {
        let gateway = Arc::new(Gateway {
            state: Mutex::new(State::default()),
            faults,
        });
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (tcp.local_addr().unwrap(), ws.local_addr().unwrap());
        for (listener, websocket) in [(tcp, false), (ws, true)] {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let mut conn = 0;
                while let Ok((stream, _)) = listener.accept().await {
                    conn += 1;
                    tokio::spawn(gateway.clone().serve(
                        stream,
                        conn * 2 + u64::from(websocket),
                        websocket,
                    ));
                }
            });
        }
        addrs
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, conn: u64, websocket: bool) {
        stream.set_nodelay(true).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
        if websocket {
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let (mut sink, mut stream) = ws.split();
            tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    let frame = WsMessage::Binary(message.encode_to_vec().into());
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
            });
            let mut user = 0;
            while let Some(Ok(WsMessage::Binary(bytes))) = stream.next().await {
                let request = Request::decode(bytes).unwrap();
                self.handle(conn, &mut user, request, &tx);
            }
        } else {
            let (read, write) = stream.into_split();
            let mut write = FramedWrite::new(write, Codec::<Request>::default());
            tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    if write.send(&message).await.is_err() {
                        break;
                    }
                }
            });
            let mut read = FramedRead::new(read, Codec::<Request>::default());
            let mut user = 0;
            while let Some(Ok(request)) = read.next().await {
                self.handle(conn, &mut user, request, &tx);
            }
        }
    }

    fn handle(
        &self,
        conn: u64,
        user: &mut u64,
        request: Request,
        tx: &mpsc::UnboundedSender<ServerMessage>,
    ) {
        let mut state = self.state.lock();
        let reply = |body: Body| ServerMessage {
            id: request.id,
            error: None,
            body: Some(body),
        };
        let send = matches!(
            request.command,
            Some(Command::Send(_) | Command::SendGroup(_))
        );
        state.sends += u64::from(send);
        if send
            && self
                .faults
                .refuse_every
                .is_some_and(|every| state.sends % every == 0)
        {
            let _ = tx.send(ServerMessage {
                id: request.id,
                error: Some(Error {
                    code: Code::ResourceExhausted.into(),
                    message: "rate limit".into(),
                    retryable: true,
                }),
                body: None,
            });
            return;
        }
        let message = match request.command.clone().unwrap() {
            Command::Register(register) => {
                if state.names.contains_key(&register.name) {
                    ServerMessage {
                        id: request.id,
                        error: Some(Error {
                            code: Code::AlreadyExists.into(),
                            message: "taken".into(),
                            retryable: false,
                        }),
                        body: None,
                    }
                } else {
                    state.next_id += 1;
                    let id = state.next_id;
                    state.names.insert(register.name, id);
                    reply(Body::Profile(UserProfile {
                        user_id: id,
                        ..UserProfile::default()
                    }))
                }
            }
            Command::Login(login) => {
                *user = match login.token.strip_prefix('t') {
                    Some(id) => id.parse().unwrap(),
                    None => state.names[&login.name],
                };
                state
                    .connections
                    .entry(*user)
                    .or_default()
                    .push((conn, tx.clone()));
                reply(Body::Session(Session {
                    user_id: *user,
                    token: format!("t{user}"),
                    ..Session::default()
                }))
            }
            Command::Ping(_) => reply(Body::Pong(Pong::default())),
            Command::AddFriend(_) => reply(Body::FriendRequest(FriendRequest::default())),
            Command::CreateGroup(create) => {
                state.next_id += 1;
                let id = state.next_id;
                let mut members = create.member_ids;
                members.push(*user);
                state.groups.insert(id, members);
                reply(Body::Group(GroupInfo {
                    group_id: id,
                    ..GroupInfo::default()
                }))
            }
            Command::Invite(invite) => {
                let group = state.groups.get_mut(&invite.group_id).unwrap();
                group.extend(&invite.user_ids);
                reply(Body::UserIds(UserIds {
                    user_ids: invite.user_ids,
                }))
            }
            Command::Send(send) => {
                let (low, high) = ((*user).min(send.to_user_id), (*user).max(send.to_user_id));
                let members = vec![*user, send.to_user_id];
                self.commit(
                    &mut state,
                    conn,
                    *user,
                    format!("d:{low}:{high}"),
                    &members,
                    send.body,
                    request.id,
                )
            }
            Command::SendGroup(send) => {
                let members = state.groups[&send.group_id].clone();
                self.commit(
                    &mut state,
                    conn,
                    *user,
                    format!("g:{}", send.group_id),
                    &members,
                    send.body,
                    request.id,
                )
            }
            other => panic!("the stand-in does not do {other:?}"),
        };
        let _ = tx.send(message);
    }

    /// Stores a message, pushes it to every connection of `members` but the sender's, and
    /// returns the ack.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        state: &mut State,
        conn: u64,
        sender: u64,
        conversation: String,
        members: &[u64],
        body: String,
        id: u64,
    ) -> ServerMessage {
        state.next_id += 1;
        let msg_id = state.next_id;
        let seq = state.seqs.entry(conversation.clone()).or_default();
        *seq += 1;
        let seq = *seq;
        let push = ServerMessage {
            id: 0,
            error: None,
            body: Some(Body::Message(ChatMessage {
                msg_id,
                conversation_id: conversation.clone(),
                seq,
                sender_id: sender,
                body,
                ..ChatMessage::default()
            })),
        };
        let targets = members
            .iter()
            .flat_map(|member| state.connections.get(member).into_iter().flatten())
            .filter(|(other, _)| *other != conn)
            .map(|(_, tx)| tx.clone())
            .collect::<Vec<_>>();
        for tx in targets {
            state.pushes += 1;
            let n = state.pushes;
            if self.faults.drop_every.is_some_and(|every| n % every == 0) {
                continue;
            }
            let _ = tx.send(push.clone());
            if self.faults.dup_every.is_some_and(|every| n % every == 0) {
                let _ = tx.send(push.clone());
            }
        }
        ServerMessage {
            id,
            error: None,
            body: Some(Body::Ack(SendAck {
                msg_id,
                seq,
                conversation_id: conversation,
                ..SendAck::default()
            })),
        }
    }
}

pub fn load(addr: SocketAddr, ws: Option<SocketAddr>) -> Load {
    Load {
        setup: Setup {
            endpoint: Endpoint {
                addr: ws.unwrap_or(addr),
                ws_url: ws.map(|ws| format!("ws://{ws}/ws")),
                tls: None,
            },
            sources: Vec::new(),
            prefix: "t".into(),
            password: "pw".into(),
            concurrency: 8,
        },
        warmup: Duration::from_millis(200),
        drain: Duration::from_secs(5),
        body_bytes: 32,
    }
}
