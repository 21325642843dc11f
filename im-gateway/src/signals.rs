//! Typing and read receipts: who hears them, and how they get there (pushed here to local
//! connections, published once per other gateway that holds a recipient).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use im_common::bus::channels;
use im_common::ids::{ConversationId, now_ms};
use im_proto::client::server_message::Body;
use im_proto::client::{Code, ReadReceipt, Typing, TypingNotice};
use im_proto::{ConversationRef, Empty, Event, MarkReadRequest, MembersRequest, ReadNotice, event};
use parking_lot::Mutex;
use prost::Message as _;
use tracing::warn;

use crate::Shared;
use crate::dispatch::{Handled, call, service_error};
use crate::registry::{Conn, Session};
use crate::wire::{self, Encoded};

/// Most group members a Typing goes to (one Members page each).
const MAX_TYPING_MEMBERS: usize = 5000;
/// Groups whose member lists are kept for Typing.
const MAX_CACHED_GROUPS: usize = 10_000;

/// Group member lists, kept briefly for Typing. A parking_lot mutex: a map lookup or insert
/// under it, never an await.
#[derive(Debug, Default)]
pub(crate) struct Members(Mutex<HashMap<u64, Cached>>);

/// A member list and when it was read.
type Cached = (Instant, Arc<[u64]>);

impl Shared {
    pub(crate) async fn typing(&self, conn: &Conn, session: &Session, typing: Typing) -> Handled {
        let conversation = ConversationId::parse(&typing.conversation_id)
            .map_err(|status| wire::error(Code::InvalidArgument, status.message(), false))?;
        // Every Typing is checked, also one the interval then drops: a user who may not
        // type here never gets `ok`.
        let check = ConversationRef {
            conversation_id: typing.conversation_id.clone(),
        };
        self.services
            .message
            .check_typing_with(&check, &self.options_for(session))
            .await
            .map_err(|err| service_error(&err))?;
        let now = now_ms();
        let last = conn.last_typing_ms.load(Ordering::Relaxed);
        let interval = i64::try_from(self.settings.typing_interval_ms).unwrap_or(i64::MAX);
        if now.saturating_sub(last) < interval {
            // Typing is a hint: one per interval is passed on, the rest is dropped quietly.
            return Ok(Body::Ok(Empty {}));
        }
        conn.last_typing_ms.store(now, Ordering::Relaxed);
        let me = session.user;
        let recipients: Vec<u64> = match conversation {
            ConversationId::Direct(..) => conversation.peer_of(me).into_iter().collect(),
            ConversationId::Group(group) => {
                let members = self.group_members(session, group).await?;
                members.iter().copied().filter(|&m| m != me).collect()
            }
        };
        let conversation_id = typing.conversation_id;
        let local = Encoded::push(Body::Typing(TypingNotice {
            conversation_id: conversation_id.clone(),
            user_id: me,
        }));
        self.tell(recipients, local, None, |to_user_ids| {
            event::Event::Typing(im_proto::Typing {
                conversation_id: conversation_id.clone(),
                user_id: me,
                to_user_ids,
            })
        })
        .await;
        Ok(Body::Ok(Empty {}))
    }

    pub(crate) async fn mark_read(
        &self,
        conn: &Conn,
        session: &Session,
        request: MarkReadRequest,
    ) -> Handled {
        let options = self.options_for(session);
        let message = &self.services.message;
        let conversation_id = request.conversation_id.clone();
        let reply = call!(&options, message, mark_read_with, request, Body::Read)?;
        let Body::Read(read) = &reply else {
            return Ok(reply);
        };
        let me = session.user;
        if let Some(peer) = ConversationId::parse(&conversation_id)
            .ok()
            .and_then(|c| c.peer_of(me))
        {
            let read_seq = read.read_seq;
            let local = Encoded::push(Body::ReadReceipt(ReadReceipt {
                conversation_id: conversation_id.clone(),
                user_id: me,
                read_seq,
            }));
            // The reader's other devices see it too; the reading connection knows.
            self.tell(vec![peer, me], local, Some(conn.id), |to_user_ids| {
                event::Event::Read(ReadNotice {
                    conversation_id: conversation_id.clone(),
                    user_id: me,
                    read_seq,
                    to_user_ids,
                })
            })
            .await;
        }
        Ok(reply)
    }

    /// Pushes `local` to `users`' connections here (but `skip`), and publishes the event
    /// `remote` makes to each other gateway that holds some of them. Best effort.
    async fn tell(
        &self,
        users: Vec<u64>,
        local: Arc<Encoded>,
        skip: Option<u64>,
        remote: impl Fn(Vec<u64>) -> event::Event,
    ) {
        for &user in &users {
            self.registry.each(user, |conn| {
                if Some(conn.id) != skip {
                    conn.push(local.clone(), None, self.settings.max_queued);
                }
            });
        }
        let routes = self
            .services
            .presence
            .query_routes_with(&im_proto::UserIds { user_ids: users }, &self.options())
            .await;
        let routes = match routes {
            Ok(routes) => routes.routes,
            Err(err) => {
                warn!(cause = %err, "routes unknown: event not passed on");
                return;
            }
        };
        let mut by_gateway: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for route in routes.into_iter().filter(|r| r.gateway_id != self.id) {
            let users = by_gateway.entry(route.gateway_id).or_default();
            if !users.contains(&route.user_id) {
                users.push(route.user_id);
            }
        }
        for (gateway, to_user_ids) in by_gateway {
            let payload = Event {
                event: Some(remote(to_user_ids)),
            }
            .encode_to_vec();
            let published = self
                .bus
                .pubsub
                .publish(channels::gateway(&gateway), payload.into())
                .await;
            if let Err(err) = published {
                warn!(cause = %err, gateway, "event not published");
            }
        }
    }

    /// A group's member ids, from the cache or the group service (which checks that the
    /// caller may read them).
    async fn group_members(
        &self,
        session: &Session,
        group: u64,
    ) -> Result<Arc<[u64]>, im_proto::client::Error> {
        let fresh = Duration::from_millis(self.settings.members_cache_ms);
        let cached = self.members.0.lock().get(&group).cloned();
        if let Some((at, members)) = cached {
            if at.elapsed() < fresh {
                return Ok(members);
            }
        }
        let options = self.options_for(session);
        let mut members = Vec::new();
        let mut after_user_id = 0;
        loop {
            let request = MembersRequest {
                group_id: group,
                after_user_id,
                limit: 1000,
            };
            let page = self
                .services
                .group
                .members_with(&request, &options)
                .await
                .map_err(|err| service_error(&err))?;
            members.extend(page.members.iter().map(|m| m.user_id));
            match page.members.last() {
                Some(last) if page.has_more && members.len() < MAX_TYPING_MEMBERS => {
                    after_user_id = last.user_id;
                }
                _ => break,
            }
        }
        let members: Arc<[u64]> = members.into();
        let mut cache = self.members.0.lock();
        if cache.len() >= MAX_CACHED_GROUPS {
            cache.retain(|_, (at, _)| at.elapsed() < fresh);
            if cache.len() >= MAX_CACHED_GROUPS {
                cache.clear();
            }
        }
        cache.insert(group, (Instant::now(), members.clone()));
        Ok(members)
    }
}
