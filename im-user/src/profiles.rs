//! GetProfile, GetProfiles, SearchUser and UpdateProfile, with profiles cached on the bus;
//! StatusVisible.
//!
//! A user sees the profiles of the users they have to do with ([`Scope::Profile`]: friends,
//! co-members, …), not of anyone by id: login names cannot be listed by counting ids. A
//! profile the caller may not see is answered as one that does not exist. SearchUser by
//! exact login name stays open: it is how friends are found.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use im_common::bus::keys;
use im_common::identity;
use im_common::proto::{
    GetProfilesRequest, Profiles, SearchUserRequest, UpdateProfileRequest, UserId, UserIds,
    UserProfile,
};
use im_common::store::users::{ProfileUpdate, Scope, UserStore};
use im_common::validate::{self, MAX_AVATAR_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use mprpc::{Context, Status};

use crate::state::Users;

/// Most ids one GetProfiles call may ask for.
pub const MAX_BATCH: usize = 500;
/// Most ids one StatusVisible call may ask about (a friend list, a group's members).
pub const MAX_STATUS_IDS: usize = 1000;

pub(crate) async fn get_profile(
    users: &Users,
    ctx: &Context,
    req: UserId,
) -> Result<UserProfile, Status> {
    let caller = identity::user(ctx)?.id;
    let id = validate::user_id("user_id", req.user_id)?;
    if users
        .sql
        .visible(caller, &[id], Scope::Profile)
        .await?
        .is_empty()
    {
        return Err(Status::not_found("user not found"));
    }
    profiles(users, &[id])
        .await?
        .pop()
        .ok_or_else(|| Status::not_found("user not found"))
}

pub(crate) async fn get_profiles(
    users: &Users,
    ctx: &Context,
    req: GetProfilesRequest,
) -> Result<Profiles, Status> {
    let caller = identity::user(ctx)?.id;
    if req.user_ids.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "user_ids has {} ids, more than the limit of {MAX_BATCH}",
            req.user_ids.len()
        )));
    }
    let visible = users
        .sql
        .visible(caller, &req.user_ids, Scope::Profile)
        .await?;
    let ids: Vec<u64> = req
        .user_ids
        .into_iter()
        .filter(|id| visible.contains(id))
        .collect();
    Ok(Profiles {
        profiles: profiles(users, &ids).await?,
    })
}

/// Of `req`'s ids, those whose status the caller may see ([`Scope::Status`]).
pub(crate) async fn status_visible(
    users: &Users,
    ctx: &Context,
    req: UserIds,
) -> Result<UserIds, Status> {
    let caller = identity::user(ctx)?.id;
    if req.user_ids.len() > MAX_STATUS_IDS {
        return Err(Status::invalid_argument(format!(
            "user_ids has {} ids, more than the limit of {MAX_STATUS_IDS}",
            req.user_ids.len()
        )));
    }
    let visible = users
        .sql
        .visible(caller, &req.user_ids, Scope::Status)
        .await?;
    let user_ids = req
        .user_ids
        .into_iter()
        .filter(|id| visible.contains(id))
        .collect();
    Ok(UserIds { user_ids })
}

pub(crate) async fn search_user(
    users: &Users,
    ctx: &Context,
    req: SearchUserRequest,
) -> Result<Profiles, Status> {
    identity::user(ctx)?;
    // A name no account can have matches nobody; the database is not asked.
    if validate::login_name(&req.name).is_err() {
        return Ok(Profiles::default());
    }
    let found = users.sql.user_by_name(&req.name).await?;
    Ok(Profiles {
        profiles: found.into_iter().collect(),
    })
}

pub(crate) async fn update_profile(
    users: &Users,
    ctx: &Context,
    req: UpdateProfileRequest,
) -> Result<UserProfile, Status> {
    let caller = identity::user(ctx)?;
    if let Some(nickname) = &req.nickname {
        validate::non_empty_text("nickname", nickname, MAX_NAME_BYTES)?;
    }
    if let Some(avatar) = &req.avatar {
        validate::text("avatar", avatar, MAX_AVATAR_BYTES)?;
    }
    if let Some(bio) = &req.bio {
        validate::text("bio", bio, MAX_TEXT_BYTES)?;
    }
    let update = ProfileUpdate {
        nickname: req.nickname,
        avatar: req.avatar,
        bio: req.bio,
    };
    let profile = users.sql.update_profile(caller.id, update).await?;
    // The new profile is also cached, not only the old one deleted: a read right after, on
    // a lagging replica, would otherwise cache the old profile again.
    users.cache.forget(vec![keys::profile(caller.id)]).await;
    users.cache.set_profile(&profile).await;
    Ok(profile)
}

/// The profiles of `ids` that exist, in the order asked, each once: from the cache where
/// it has them, else from the database (and then cached).
pub(crate) async fn profiles(users: &Users, ids: &[u64]) -> Result<Vec<UserProfile>, Status> {
    let mut seen = HashSet::with_capacity(ids.len());
    let ids: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| id != 0 && seen.insert(id))
        .collect();
    let cached = join_all(ids.iter().map(|&id| users.cache.profile(id))).await;
    let mut found: HashMap<u64, UserProfile> = cached
        .into_iter()
        .flatten()
        .map(|p| (p.user_id, p))
        .collect();
    let missing: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains_key(id))
        .collect();
    if !missing.is_empty() {
        let loaded = users.sql.users(&missing).await?;
        join_all(loaded.iter().map(|p| users.cache.set_profile(p))).await;
        found.extend(loaded.into_iter().map(|p| (p.user_id, p)));
    }
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}
