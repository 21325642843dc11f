//! The `UserService` rpcs on [`Users`]: each is routed to the module of its concept
//! (`account`, `profiles`, `friends`, `sessions`), which does the work.

use im_common::proto::{CheckSessionsReply, CheckSessionsRequest};
use im_common::proto::{
    Empty, FriendRequest, FriendRequests, GetProfilesRequest, ListFriendRequestsRequest,
    LoginReply, LoginRequest, LogoutRequest, Profiles, RegisterRequest,
    RespondFriendRequestRequest, SearchUserRequest, SendFriendRequestRequest, UpdateProfileRequest,
    UserId, UserIds, UserProfile, UserService, VerifyTokenReply, VerifyTokenRequest,
};
use mprpc::{Context, Status};

use crate::state::Users;
use crate::{account, friends, profiles, sessions};

impl UserService for Users {
    async fn register(&self, _ctx: Context, req: RegisterRequest) -> Result<UserProfile, Status> {
        account::register(self, req).await
    }

    async fn login(&self, _ctx: Context, req: LoginRequest) -> Result<LoginReply, Status> {
        account::login(self, req).await
    }

    async fn verify_token(
        &self,
        _ctx: Context,
        req: VerifyTokenRequest,
    ) -> Result<VerifyTokenReply, Status> {
        account::verify_token(self, req).await
    }

    async fn logout(&self, ctx: Context, req: LogoutRequest) -> Result<Empty, Status> {
        account::logout(self, &ctx, req).await
    }

    async fn get_profile(&self, ctx: Context, req: UserId) -> Result<UserProfile, Status> {
        profiles::get_profile(self, &ctx, req).await
    }

    async fn update_profile(
        &self,
        ctx: Context,
        req: UpdateProfileRequest,
    ) -> Result<UserProfile, Status> {
        profiles::update_profile(self, &ctx, req).await
    }

    async fn get_profiles(
        &self,
        ctx: Context,
        req: GetProfilesRequest,
    ) -> Result<Profiles, Status> {
        profiles::get_profiles(self, &ctx, req).await
    }

    async fn search_user(&self, ctx: Context, req: SearchUserRequest) -> Result<Profiles, Status> {
        profiles::search_user(self, &ctx, req).await
    }

    async fn send_friend_request(
        &self,
        ctx: Context,
        req: SendFriendRequestRequest,
    ) -> Result<FriendRequest, Status> {
        friends::send_request(self, &ctx, req).await
    }

    async fn respond_friend_request(
        &self,
        ctx: Context,
        req: RespondFriendRequestRequest,
    ) -> Result<FriendRequest, Status> {
        friends::respond(self, &ctx, req).await
    }

    async fn list_friend_requests(
        &self,
        ctx: Context,
        req: ListFriendRequestsRequest,
    ) -> Result<FriendRequests, Status> {
        friends::list_requests(self, &ctx, req).await
    }

    async fn remove_friend(&self, ctx: Context, req: UserId) -> Result<Empty, Status> {
        friends::remove(self, &ctx, req).await
    }

    async fn list_friends(&self, ctx: Context, _req: Empty) -> Result<Profiles, Status> {
        friends::list(self, &ctx).await
    }

    async fn block(&self, ctx: Context, req: UserId) -> Result<Empty, Status> {
        friends::block(self, &ctx, req).await
    }

    async fn unblock(&self, ctx: Context, req: UserId) -> Result<Empty, Status> {
        friends::unblock(self, &ctx, req).await
    }

    async fn list_blocked(&self, ctx: Context, _req: Empty) -> Result<UserIds, Status> {
        friends::list_blocked(self, &ctx).await
    }

    async fn check_sessions(
        &self,
        _ctx: Context,
        req: CheckSessionsRequest,
    ) -> Result<CheckSessionsReply, Status> {
        sessions::check_sessions(self, req).await
    }

    async fn status_visible(&self, ctx: Context, req: UserIds) -> Result<UserIds, Status> {
        profiles::status_visible(self, &ctx, req).await
    }
}
