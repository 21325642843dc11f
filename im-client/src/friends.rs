//! Profiles and friends: [`Client`] methods over the user commands.

use im_proto::client::request::Command;
use im_proto::*;

use crate::{Client, Error};

impl Client {
    /// One user's profile.
    ///
    /// # Errors
    /// As [`Client::call`]; `NOT_FOUND` for no such user, or one the caller has nothing to
    /// do with.
    pub async fn get_profile(&self, user_id: u64) -> Result<UserProfile, Error> {
        expect!(
            self.call(Command::GetProfile(UserId { user_id })).await,
            Profile
        )
    }

    /// The profiles of these users (unknown ids, and those of users the caller has nothing
    /// to do with, are left out: see "What others see" in docs/client-protocol.md).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn get_profiles(&self, user_ids: Vec<u64>) -> Result<Profiles, Error> {
        let request = GetProfilesRequest { user_ids };
        expect!(self.call(Command::GetProfiles(request)).await, Profiles)
    }

    /// Changes the own profile; `None` leaves a field as it is.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn update_profile(&self, update: UpdateProfileRequest) -> Result<UserProfile, Error> {
        expect!(self.call(Command::UpdateProfile(update)).await, Profile)
    }

    /// The user with exactly this login name (none or one profile).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn search_user(&self, name: &str) -> Result<Profiles, Error> {
        let request = SearchUserRequest { name: name.into() };
        expect!(self.call(Command::SearchUser(request)).await, Profiles)
    }

    /// Asks a user to be friends.
    ///
    /// # Errors
    /// As [`Client::call`]; `ALREADY_EXISTS` when already friends or already asked.
    pub async fn add_friend(&self, to_user_id: u64, message: &str) -> Result<FriendRequest, Error> {
        let request = SendFriendRequestRequest {
            to_user_id,
            message: message.into(),
        };
        expect!(self.call(Command::AddFriend(request)).await, FriendRequest)
    }

    /// Accepts or rejects a friend request made to this user.
    ///
    /// # Errors
    /// As [`Client::call`]; `NOT_FOUND` for no such pending request.
    pub async fn respond_friend(
        &self,
        request_id: u64,
        accept: bool,
    ) -> Result<FriendRequest, Error> {
        let request = RespondFriendRequestRequest { request_id, accept };
        expect!(
            self.call(Command::RespondFriend(request)).await,
            FriendRequest
        )
    }

    /// Friend requests to this user, or (`outgoing`) the ones it sent.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_friend_requests(&self, outgoing: bool) -> Result<FriendRequests, Error> {
        let request = ListFriendRequestsRequest { outgoing };
        expect!(
            self.call(Command::ListFriendRequests(request)).await,
            FriendRequests
        )
    }

    /// Ends a friendship.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn remove_friend(&self, user_id: u64) -> Result<(), Error> {
        expect!(
            self.call(Command::RemoveFriend(UserId { user_id })).await,
            Ok
        )
        .map(drop)
    }

    /// The friends' profiles.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_friends(&self) -> Result<Profiles, Error> {
        expect!(self.call(Command::ListFriends(Empty {})).await, Profiles)
    }

    /// Blocks a user: no messages from them, no friend requests.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn block(&self, user_id: u64) -> Result<(), Error> {
        expect!(self.call(Command::Block(UserId { user_id })).await, Ok).map(drop)
    }

    /// Lifts a block.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn unblock(&self, user_id: u64) -> Result<(), Error> {
        expect!(self.call(Command::Unblock(UserId { user_id })).await, Ok).map(drop)
    }

    /// The users this user blocked.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_blocked(&self) -> Result<Vec<u64>, Error> {
        expect!(self.call(Command::ListBlocked(Empty {})).await, UserIds).map(|ids| ids.user_ids)
    }

    /// Whether these users are online, and when they were last seen: for the caller's
    /// friends and co-members of a group (others are left out), at most 1000 ids.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn query_status(&self, user_ids: Vec<u64>) -> Result<Statuses, Error> {
        expect!(
            self.call(Command::QueryStatus(UserIds { user_ids })).await,
            Statuses
        )
    }
}
