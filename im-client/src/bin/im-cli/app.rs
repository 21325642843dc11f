//! The terminal client's state (who is logged in, the current conversation, names known)
//! and what each command does.

use std::collections::HashMap;

use im_client::im_proto::{Conversation, FriendRequestState, GroupRole};
use im_client::{Client, Error, Event};

mod names;
mod show;

use crate::command::{HELP, Input};
use crate::view::{clock, say};

/// Where typed text goes.
#[derive(Debug, Clone)]
enum Target {
    User { id: u64, name: String },
    Group { id: u64, name: String },
}

pub(crate) struct App {
    client: Client,
    /// The logged-in user.
    me: Option<(u64, String)>,
    current: Option<Target>,
    names: HashMap<u64, String>,
    ids: HashMap<String, u64>,
    groups: HashMap<u64, String>,
}

/// Whether to keep reading input.
pub(crate) enum Flow {
    Continue,
    Quit,
}

impl App {
    pub(crate) fn new(client: Client) -> App {
        App {
            client,
            me: None,
            current: None,
            names: HashMap::new(),
            ids: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Runs one line of input; a failure is one `error:` line.
    pub(crate) async fn input(&mut self, input: Input) -> Flow {
        if let Input::Quit = input {
            return Flow::Quit;
        }
        if let Err(err) = self.run(input).await {
            say(&format!("error: {err}"));
        }
        Flow::Continue
    }

    async fn run(&mut self, input: Input) -> Result<(), String> {
        match input {
            Input::Empty | Input::Quit => {}
            Input::Help => say(HELP),
            Input::Text(text) => self.send(&text).await?,
            Input::Register { name, password } => {
                let profile = self.client.register(&name, &password).await.map_err(text)?;
                self.learn(profile.user_id, &profile.name);
                say(&format!(
                    "-- registered {name} (id {}); now /login {name} <password>",
                    profile.user_id
                ));
            }
            Input::Login { name, password } => self.login(&name, &password).await?,
            Input::Logout => {
                self.client.logout().await.map_err(text)?;
                (self.me, self.current) = (None, None);
                say("-- logged out");
            }
            Input::Users(name) => self.users(&name).await?,
            Input::Add(name) => {
                let id = self.resolve(&name).await?;
                let request = self.client.add_friend(id, "").await.map_err(text)?;
                say(&format!(
                    "-- friend request #{} sent to {name}",
                    request.request_id
                ));
            }
            Input::Requests => self.requests().await?,
            Input::Accept(id) | Input::Reject(id) => {
                let accept = matches!(input, Input::Accept(_));
                let request = self.client.respond_friend(id, accept).await.map_err(text)?;
                let from = self.name_of(request.from_user_id).await;
                say(&if accept {
                    format!("-- you and {from} are friends now; /chat {from} to talk")
                } else {
                    format!("-- rejected the request from {from}")
                });
            }
            Input::Friends => self.friends().await?,
            Input::Block(name) => {
                let id = self.resolve(&name).await?;
                self.client.block(id).await.map_err(text)?;
                say(&format!("-- blocked {name}"));
            }
            Input::Chat(name) => {
                let id = self.resolve(&name).await?;
                self.current = Some(Target::User {
                    id,
                    name: name.clone(),
                });
                say(&format!(
                    "-- talking to {name} (what you type goes to {name})"
                ));
            }
            Input::GroupCreate { name, members } => self.create_group(&name, &members).await?,
            Input::GroupJoin(id) => {
                if self.client.join_group(id, "").await.map_err(text)? {
                    self.enter_group(id).await?;
                } else {
                    say(&format!(
                        "-- asked to join group {id}; an admin has to approve"
                    ));
                }
            }
            Input::GroupMembers => self.members().await?,
            Input::Groups => self.list_groups().await?,
            Input::Group(id) => self.enter_group(id).await?,
            Input::History(n) => self.history(n).await?,
            Input::Unread => self.unread(true).await?,
            Input::Read => self.read().await?,
            Input::Recall(id) => drop(self.client.recall(id).await.map_err(text)?),
            Input::Edit { msg_id, text: body } => {
                drop(self.client.edit(msg_id, &body).await.map_err(text)?)
            }
        }
        Ok(())
    }

    async fn send(&mut self, body: &str) -> Result<(), String> {
        match &self.current {
            Some(Target::User { id, .. }) => drop(self.client.send(*id, body).await.map_err(text)?),
            Some(Target::Group { id, .. }) => {
                drop(self.client.send_group(*id, body).await.map_err(text)?)
            }
            None => return Err("no conversation yet: /chat <name> or /g <group id> first".into()),
        }
        Ok(())
    }

    async fn login(&mut self, name: &str, password: &str) -> Result<(), String> {
        let session = self.client.login(name, password).await.map_err(text)?;
        self.learn(session.user_id, name);
        self.me = Some((session.user_id, name.to_owned()));
        self.current = None;
        say(&format!("-- logged in as {name} (id {})", session.user_id));
        self.unread(false).await
    }

    async fn users(&mut self, name: &str) -> Result<(), String> {
        let found = self.client.search_user(name).await.map_err(text)?.profiles;
        if found.is_empty() {
            say(&format!("-- no user named {name}"));
        }
        for profile in found {
            self.learn(profile.user_id, &profile.name);
            say(&format!(
                "  {} (id {}) {}",
                profile.name, profile.user_id, profile.nickname
            ));
        }
        Ok(())
    }

    async fn requests(&mut self) -> Result<(), String> {
        let requests = self
            .client
            .list_friend_requests(false)
            .await
            .map_err(text)?
            .requests;
        let pending: Vec<_> = requests
            .into_iter()
            .filter(|r| r.state() == FriendRequestState::Pending)
            .collect();
        if pending.is_empty() {
            say("-- no friend requests");
        }
        for request in pending {
            let from = self.name_of(request.from_user_id).await;
            let note = if request.message.is_empty() {
                String::new()
            } else {
                format!(": {}", request.message)
            };
            say(&format!(
                "  #{} from {from}{note}  (/accept {0} or /reject {0})",
                request.request_id
            ));
        }
        Ok(())
    }

    async fn friends(&mut self) -> Result<(), String> {
        let friends = self.client.list_friends().await.map_err(text)?.profiles;
        if friends.is_empty() {
            say("-- no friends yet: /add <name>");
            return Ok(());
        }
        let ids = friends.iter().map(|p| p.user_id).collect();
        let statuses = self
            .client
            .query_status(ids)
            .await
            .map(|s| s.statuses)
            .unwrap_or_default();
        for friend in friends {
            self.learn(friend.user_id, &friend.name);
            let online = statuses
                .iter()
                .any(|s| s.user_id == friend.user_id && s.online);
            say(&format!(
                "  {} ({})",
                friend.name,
                if online { "online" } else { "offline" }
            ));
        }
        Ok(())
    }

    async fn create_group(&mut self, name: &str, members: &[String]) -> Result<(), String> {
        let mut ids = Vec::with_capacity(members.len());
        for member in members {
            ids.push(self.resolve(member).await?);
        }
        let group = self.client.create_group(name, ids).await.map_err(text)?;
        say(&format!(
            "-- created group {} \"{name}\" with {} members",
            group.group_id, group.member_count
        ));
        self.enter_group(group.group_id).await
    }

    async fn enter_group(&mut self, id: u64) -> Result<(), String> {
        let info = self.client.group_info(id).await.map_err(text)?;
        self.groups.insert(id, info.name.clone());
        say(&format!(
            "-- talking in #{} (group {id}, {} members)",
            info.name, info.member_count
        ));
        self.current = Some(Target::Group {
            id,
            name: info.name,
        });
        Ok(())
    }

    async fn members(&mut self) -> Result<(), String> {
        let Some(Target::Group { id, name }) = self.current.clone() else {
            return Err("not in a group: /g <group id> first".into());
        };
        let members = self.client.members(id, 0, 1000).await.map_err(text)?;
        say(&format!("-- members of #{name}:"));
        for member in members.members {
            let who = self.name_of(member.user_id).await;
            let role = match member.role() {
                GroupRole::Owner => " (owner)",
                GroupRole::Admin => " (admin)",
                _ => "",
            };
            say(&format!("  {who}{role}"));
        }
        Ok(())
    }

    async fn list_groups(&mut self) -> Result<(), String> {
        let groups = self.client.my_groups().await.map_err(text)?.groups;
        if groups.is_empty() {
            say("-- no groups: /group create <name> [members...]");
        }
        for group in groups {
            say(&format!(
                "  {} #{} ({} members)  /g {0}",
                group.group_id, group.name, group.member_count
            ));
            self.groups.insert(group.group_id, group.name);
        }
        Ok(())
    }

    /// The current conversation's id, and how it is named on screen.
    fn conversation(&self) -> Result<(String, String), String> {
        let me = self
            .me
            .as_ref()
            .map(|m| m.0)
            .ok_or("log in first: /login <name> <password>")?;
        match &self.current {
            Some(Target::User { id, name }) => {
                let (low, high) = (me.min(*id), me.max(*id));
                Ok((format!("d:{low}:{high}"), name.clone()))
            }
            Some(Target::Group { id, name }) => Ok((format!("g:{id}"), format!("#{name}"))),
            None => Err("no conversation yet: /chat <name> or /g <group id> first".into()),
        }
    }

    async fn find(&self, conversation_id: &str) -> Result<Option<Conversation>, String> {
        let list = self.client.list_conversations().await.map_err(text)?;
        Ok(list
            .conversations
            .into_iter()
            .find(|c| c.conversation_id == conversation_id))
    }

    async fn history(&mut self, n: u32) -> Result<(), String> {
        let (id, label) = self.conversation()?;
        let last = self.find(&id).await?.map_or(0, |c| c.last_seq);
        if last == 0 {
            say(&format!("-- no messages with {label} yet"));
            return Ok(());
        }
        let page = self
            .client
            .sync(&id, last.saturating_sub(u64::from(n)), n)
            .await
            .map_err(text)?;
        say(&format!("-- history with {label}:"));
        for entry in page.messages {
            self.show_entry(Event::Message(entry)).await;
        }
        Ok(())
    }

    async fn unread(&mut self, always: bool) -> Result<(), String> {
        let mut list = self
            .client
            .list_conversations()
            .await
            .map_err(text)?
            .conversations;
        list.retain(|c| c.unread > 0);
        list.sort_by_key(|c| {
            std::cmp::Reverse(c.last_message.as_ref().map_or(0, |m| m.server_time_ms))
        });
        if list.is_empty() {
            if always {
                say("-- nothing unread");
            }
            return Ok(());
        }
        say("-- unread:");
        for conversation in list {
            let (label, command) = self.label(&conversation).await;
            let last = conversation.last_message.unwrap_or_default();
            let time = clock(last.server_time_ms);
            say(&format!(
                "  {label}: {} unread, last {time} {}  ({command})",
                conversation.unread, last.body
            ));
        }
        Ok(())
    }

    /// How a conversation is named, and the command that opens it.
    async fn label(&mut self, conversation: &Conversation) -> (String, String) {
        if conversation.group_id != 0 {
            let name = self.group_name(conversation.group_id).await;
            (format!("#{name}"), format!("/g {}", conversation.group_id))
        } else {
            let name = self.name_of(conversation.peer_id).await;
            (name.clone(), format!("/chat {name}"))
        }
    }

    async fn read(&mut self) -> Result<(), String> {
        let (id, label) = self.conversation()?;
        let last = self.find(&id).await?.map_or(0, |c| c.last_seq);
        let read = self.client.mark_read(&id, last).await.map_err(text)?;
        say(&format!("-- {label}: read up to seq {read}"));
        Ok(())
    }
}

fn text(err: Error) -> String {
    err.to_string()
}
