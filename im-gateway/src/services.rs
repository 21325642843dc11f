//! The four services the gateway calls for its clients.

use im_common::identity::ServiceIdentity;
use im_common::proto::{
    GroupServiceClient, MessageServiceClient, PresenceServiceClient, UserServiceClient,
};
use im_common::serve::{Discovery, ports};

/// How the gateway names itself to the services.
pub const NAME: &str = "im-gateway";

/// Typed clients of the services, each carrying the gateway's service identity.
#[derive(Debug, Clone)]
pub struct Services {
    /// `mpim.UserService`.
    pub user: UserServiceClient,
    /// `mpim.PresenceService`.
    pub presence: PresenceServiceClient,
    /// `mpim.MessageService`.
    pub message: MessageServiceClient,
    /// `mpim.GroupService`.
    pub group: GroupServiceClient,
}

impl Services {
    /// Clients of the services `discovery` finds (ZooKeeper, or the static list with each
    /// service on its default port).
    ///
    /// # Errors
    /// When a service's first instance list cannot be read.
    pub async fn discover(discovery: &Discovery) -> anyhow::Result<Services> {
        Ok(Services {
            user: UserServiceClient::new(
                discovery
                    .client(NAME, "mpim.UserService", ports::USER)
                    .await?,
            ),
            presence: PresenceServiceClient::new(
                discovery
                    .client(NAME, "mpim.PresenceService", ports::PRESENCE)
                    .await?,
            ),
            message: MessageServiceClient::new(
                discovery
                    .client(NAME, "mpim.MessageService", ports::MESSAGE)
                    .await?,
            ),
            group: GroupServiceClient::new(
                discovery
                    .client(NAME, "mpim.GroupService", ports::GROUP)
                    .await?,
            ),
        })
    }

    /// Clients of the four services served in this process, through mprpc's in-process
    /// transport: no socket, the same calls, interceptors and deadlines. Each call names
    /// `caller` as its service identity (`mpim` names itself; the gateway is [`NAME`]).
    pub fn in_process(
        caller: &'static str,
        user: &mprpc::Server,
        presence: &mprpc::Server,
        message: &mprpc::Server,
        group: &mprpc::Server,
    ) -> Services {
        let client = |server: &mprpc::Server| {
            mprpc::Client::builder()
                .intercept(ServiceIdentity::new(caller))
                .in_process(server)
        };
        Services {
            user: UserServiceClient::new(client(user)),
            presence: PresenceServiceClient::new(client(presence)),
            message: MessageServiceClient::new(client(message)),
            group: GroupServiceClient::new(client(group)),
        }
    }
}
