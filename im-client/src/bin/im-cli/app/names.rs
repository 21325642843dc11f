//! Names for ids (and ids for names), asked of the gateway once and kept.

use super::{App, text};

impl App {
    /// A user's name, asked of the gateway once.
    pub(super) async fn name_of(&mut self, user_id: u64) -> String {
        if let Some(name) = self.names.get(&user_id) {
            return name.clone();
        }
        match self.client.get_profiles(vec![user_id]).await {
            Ok(profiles) if !profiles.profiles.is_empty() => {
                let name = profiles.profiles[0].name.clone();
                self.learn(user_id, &name);
                name
            }
            _ => format!("user {user_id}"),
        }
    }

    pub(super) async fn group_name(&mut self, group_id: u64) -> String {
        if let Some(name) = self.groups.get(&group_id) {
            return name.clone();
        }
        match self.client.group_info(group_id).await {
            Ok(info) => {
                self.groups.insert(group_id, info.name.clone());
                info.name
            }
            Err(_) => format!("group {group_id}"),
        }
    }

    /// A user's id by login name, asked of the gateway once.
    pub(super) async fn resolve(&mut self, name: &str) -> Result<u64, String> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let found = self.client.search_user(name).await.map_err(text)?.profiles;
        let profile = found
            .first()
            .ok_or_else(|| format!("no user named {name}"))?;
        self.learn(profile.user_id, &profile.name);
        Ok(profile.user_id)
    }

    pub(super) fn learn(&mut self, user_id: u64, name: &str) {
        self.names.insert(user_id, name.to_owned());
        self.ids.insert(name.to_owned(), user_id);
    }
}
