//! Friend requests, friends and blocks.
//!
//! - A request goes to an existing other user who is not already a friend, and neither may
//!   have blocked the other. When the target already asked the caller, asking back accepts
//!   that request; asking twice returns the pending request.
//! - Only the recipient answers a request; answering again the same way returns it as it
//!   is (the rpc is idempotent), the other way is `FAILED_PRECONDITION`.
//! - Blocking ends the friendship and rejects what was pending between the two.
//!
//! A new request is pushed to its target's connected devices, an answered one to both
//! users' (`notify`); a device that was away lists the requests instead.
//!
//! Friend and block lists are cached on the bus (as `UserIds`, which the message service
//! reads too); every write deletes both users' lists after the database commit.

use im_common::identity;
use im_common::proto::{
    Empty, FriendRequest, FriendRequestState, FriendRequests, ListFriendRequestsRequest, Profiles,
    RespondFriendRequestRequest, SendFriendRequestRequest, UserId, UserIds,
};
use im_common::store::users::{Direction, UserStore};
use im_common::validate::{self, MAX_NAME_BYTES};
use mprpc::{Context, Status};

use crate::cache::{Cached, List};
use crate::notify;
use crate::profiles;
use crate::state::Users;

/// Most requests ListFriendRequests returns (the newest).
const MAX_LISTED_REQUESTS: u32 = 200;

pub(crate) async fn send_request(
    users: &Users,
    ctx: &Context,
    req: SendFriendRequestRequest,
) -> Result<FriendRequest, Status> {
    let caller = identity::user(ctx)?.id;
    let to = validate::user_id("to_user_id", req.to_user_id)?;
    if to == caller {
        return Err(Status::invalid_argument(
            "cannot send a friend request to yourself",
        ));
    }
    validate::text("message", &req.message, MAX_NAME_BYTES)?;
    must_exist(users, to).await?;
    if blocked_between(users, caller, to).await? {
        return Err(Status::permission_denied(
            "friend requests between you and this user are blocked",
        ));
    }
    if users.sql.are_friends(caller, to).await? {
        return Err(Status::already_exists("you are already friends"));
    }
    if let Some(theirs) = users.sql.pending_request(to, caller).await? {
        let accepted = users
            .sql
            .settle_friend_request(theirs.request_id, true)
            .await?;
        users.cache.forget(Cached::graph_keys(caller, to)).await;
        notify::friend_request(users, &accepted).await;
        return Ok(accepted);
    }
    let created = users
        .sql
        .create_friend_request(caller, to, &req.message)
        .await?;
    // Asking again (the pending request comes back) tells the target again.
    notify::friend_request(users, &created).await;
    Ok(created)
}

pub(crate) async fn respond(
    users: &Users,
    ctx: &Context,
    req: RespondFriendRequestRequest,
) -> Result<FriendRequest, Status> {
    let caller = identity::user(ctx)?.id;
    let id = validate::user_id("request_id", req.request_id)?;
    let request = users
        .sql
        .friend_request(id)
        .await?
        .ok_or_else(|| Status::not_found("friend request not found"))?;
    if request.to_user_id != caller {
        return Err(Status::permission_denied(
            "only the recipient may answer a friend request",
        ));
    }
    let wanted = if req.accept {
        FriendRequestState::Accepted
    } else {
        FriendRequestState::Rejected
    };
    if request.state == wanted as i32 {
        return Ok(request);
    }
    if req.accept && blocked_between(users, caller, request.from_user_id).await? {
        return Err(Status::permission_denied(
            "friend requests between you and this user are blocked",
        ));
    }
    let settled = users.sql.settle_friend_request(id, req.accept).await?;
    if req.accept {
        users
            .cache
            .forget(Cached::graph_keys(caller, request.from_user_id))
            .await;
    }
    notify::friend_request(users, &settled).await;
    Ok(settled)
}

pub(crate) async fn list_requests(
    users: &Users,
    ctx: &Context,
    req: ListFriendRequestsRequest,
) -> Result<FriendRequests, Status> {
    let caller = identity::user(ctx)?.id;
    let direction = if req.outgoing {
        Direction::Outgoing
    } else {
        Direction::Incoming
    };
    let requests = users
        .sql
        .friend_requests(caller, direction, MAX_LISTED_REQUESTS)
        .await?;
    Ok(FriendRequests { requests })
}

pub(crate) async fn remove(users: &Users, ctx: &Context, req: UserId) -> Result<Empty, Status> {
    let caller = identity::user(ctx)?.id;
    let other = validate::user_id("user_id", req.user_id)?;
    users.sql.remove_friend(caller, other).await?;
    users.cache.forget(Cached::graph_keys(caller, other)).await;
    Ok(Empty {})
}

pub(crate) async fn list(users: &Users, ctx: &Context) -> Result<Profiles, Status> {
    let caller = identity::user(ctx)?.id;
    let ids = ids(users, List::Friends, caller).await?;
    Ok(Profiles {
        profiles: profiles::profiles(users, &ids).await?,
    })
}

pub(crate) async fn block(users: &Users, ctx: &Context, req: UserId) -> Result<Empty, Status> {
    let caller = identity::user(ctx)?.id;
    let target = validate::user_id("user_id", req.user_id)?;
    if target == caller {
        return Err(Status::invalid_argument("cannot block yourself"));
    }
    must_exist(users, target).await?;
    users.sql.block(caller, target).await?;
    users.cache.forget(Cached::graph_keys(caller, target)).await;
    Ok(Empty {})
}

pub(crate) async fn unblock(users: &Users, ctx: &Context, req: UserId) -> Result<Empty, Status> {
    let caller = identity::user(ctx)?.id;
    let target = validate::user_id("user_id", req.user_id)?;
    users.sql.unblock(caller, target).await?;
    users.cache.forget(Cached::graph_keys(caller, target)).await;
    Ok(Empty {})
}

pub(crate) async fn list_blocked(users: &Users, ctx: &Context) -> Result<UserIds, Status> {
    let caller = identity::user(ctx)?.id;
    Ok(UserIds {
        user_ids: ids(users, List::Blocked, caller).await?,
    })
}

/// `user`'s friend or block list, from the cache or else the database (then cached).
async fn ids(users: &Users, list: List, user: u64) -> Result<Vec<u64>, Status> {
    let load = || async move {
        match list {
            List::Friends => users.sql.list_friends(user).await,
            List::Blocked => users.sql.list_blocked(user).await,
        }
    };
    Ok(users.cache.ids_through(list, user, load).await?)
}

/// Whether either of `a` and `b` blocked the other (from the database, which decides).
async fn blocked_between(users: &Users, a: u64, b: u64) -> Result<bool, Status> {
    Ok(users.sql.is_blocked(a, b).await? || users.sql.is_blocked(b, a).await?)
}

async fn must_exist(users: &Users, user: u64) -> Result<(), Status> {
    match users.sql.user(user).await? {
        Some(_) => Ok(()),
        None => Err(Status::not_found("user not found")),
    }
}
