//! The terminal client's state (who is logged in, the current conversation, names known)
//! and what each command does.

use std::collections::HashMap;

use im_client::im_proto::Conversation;
use im_client::{Client, Error, Event};

mod friends;
mod groups;
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

    /// Who is typing to whom: `alice→bob`, `alice→#devs`, `alice`, or nothing before a
    /// login.
    pub(crate) fn prompt(&self) -> String {
        let Some((_, me)) = &self.me else {
            return String::new();
        };
        match &self.current {
            Some(Target::User { name, .. }) => format!("{me}→{name}"),
            Some(Target::Group { name, .. }) => format!("{me}→#{name}"),
            None => me.clone(),
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
            Input::Register { name, password } => self.register(&name, &password).await?,
            Input::Login { name, password } => self.login(&name, &password).await?,
            Input::Logout => self.logout().await?,
            Input::Users(name) => self.users(&name).await?,
            Input::Add(name) => self.add(&name).await?,
            Input::Requests => self.requests().await?,
            Input::Accept(id) => self.respond(id, true).await?,
            Input::Reject(id) => self.respond(id, false).await?,
            Input::Friends => self.friends().await?,
            Input::Block(name) => self.block(&name).await?,
            Input::Chat(name) => self.chat(&name).await?,
            Input::GroupCreate { name, members } => self.create_group(&name, &members).await?,
            Input::GroupJoin(id) => self.join_group(id).await?,
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

    async fn register(&mut self, name: &str, password: &str) -> Result<(), String> {
        let profile = self.client.register(name, password).await.map_err(text)?;
        self.learn(profile.user_id, &profile.name);
        let id = profile.user_id;
        say(&format!(
            "-- registered {name} (id {id}); now /login {name} <password>"
        ));
        Ok(())
    }

    async fn logout(&mut self) -> Result<(), String> {
        self.client.logout().await.map_err(text)?;
        (self.me, self.current) = (None, None);
        say("-- logged out");
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

    /// The current conversation's id, and how it is named on screen.
    pub(super) fn conversation(&self) -> Result<(String, String), String> {
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
        let found = self.find(&id).await?.unwrap_or_default();
        let (last, peer_read) = (found.last_seq, found.peer_read_seq);
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
        if peer_read > 0 {
            say(&format!("-- {label} read up to seq {peer_read}"));
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
