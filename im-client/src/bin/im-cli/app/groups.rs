//! Groups: creating, joining, entering one, its members, the list.

use im_client::im_proto::GroupRole;

use super::{App, Target, text};
use crate::view::say;

impl App {
    pub(super) async fn create_group(
        &mut self,
        name: &str,
        members: &[String],
    ) -> Result<(), String> {
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

    pub(super) async fn enter_group(&mut self, id: u64) -> Result<(), String> {
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

    pub(super) async fn members(&mut self) -> Result<(), String> {
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

    pub(super) async fn list_groups(&mut self) -> Result<(), String> {
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

    pub(super) async fn join_group(&mut self, id: u64) -> Result<(), String> {
        if self.client.join_group(id, "").await.map_err(text)? {
            return self.enter_group(id).await;
        }
        say(&format!(
            "-- asked to join group {id}; an admin has to approve"
        ));
        Ok(())
    }
}
