//! One line → one command. The command word is case-insensitive; arguments are separated
//! by spaces or tabs; a text (a message, a password, a description) is the rest of the
//! line, inner and trailing spaces kept.

/// A command of the legacy protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Register { name: String, password: String },
    Login { name: String, password: String },
    Send { to: u64, text: String },
    Pull,
    Logout,
    Ping,
    AddFriend { user: u64 },
    GetFriends,
    CreateGroup { name: String, description: String },
    JoinGroup { group: u64 },
    SendGroup { group: u64, text: String },
}

impl Command {
    /// Whether the command is answered before login (the others need one).
    pub(crate) fn before_login(&self) -> bool {
        matches!(
            self,
            Command::Register { .. } | Command::Login { .. } | Command::Ping
        )
    }
}

/// Every command word, for the error that names an unknown one.
const WORDS: &str =
    "REGISTER LOGIN SEND PULL LOGOUT ADDFRIEND GETFRIENDS CREATEGROUP JOINGROUP SENDGROUP PING";

/// Reads one line (not empty).
///
/// # Errors
/// A message for the client naming what is wrong: an unknown command, a missing or extra
/// argument, an id that is not a number.
pub(crate) fn parse(line: &str) -> Result<Command, String> {
    let (verb, rest) = word(line);
    let upper = verb.to_ascii_uppercase();
    let command = match upper.as_str() {
        "REGISTER" | "LOGIN" => {
            let (name, password) = word(rest);
            let password = text(password);
            if name.is_empty() || password.is_empty() {
                return Err(format!("usage: {upper} <name> <password>"));
            }
            let (name, password) = (name.to_owned(), password.to_owned());
            if upper == "REGISTER" {
                Command::Register { name, password }
            } else {
                Command::Login { name, password }
            }
        }
        "SEND" => {
            let (to, text) = id_and_text(rest, "uid", "SEND <uid> <text>")?;
            Command::Send { to, text }
        }
        "SENDGROUP" => {
            let (group, text) = id_and_text(rest, "gid", "SENDGROUP <gid> <text>")?;
            Command::SendGroup { group, text }
        }
        "ADDFRIEND" => Command::AddFriend {
            user: only_id(rest, "uid", "ADDFRIEND <uid>")?,
        },
        "JOINGROUP" => Command::JoinGroup {
            group: only_id(rest, "gid", "JOINGROUP <gid>")?,
        },
        "CREATEGROUP" => {
            let (name, description) = word(rest);
            if name.is_empty() {
                return Err("usage: CREATEGROUP <name> [description]".to_owned());
            }
            Command::CreateGroup {
                name: name.to_owned(),
                description: text(description).to_owned(),
            }
        }
        "PULL" => no_args(rest, "PULL", Command::Pull)?,
        "LOGOUT" => no_args(rest, "LOGOUT", Command::Logout)?,
        "GETFRIENDS" => no_args(rest, "GETFRIENDS", Command::GetFriends)?,
        "PING" => no_args(rest, "PING", Command::Ping)?,
        _ => {
            return Err(format!(
                "unknown command \"{}\"; commands: {WORDS}",
                shorten(verb)
            ));
        }
    };
    Ok(command)
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first word of `s` and what follows it.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_space);
    let end = s.find(is_space).unwrap_or(s.len());
    s.split_at(end)
}

/// The rest of a line as a text: without the spaces that separate it from what precedes.
fn text(s: &str) -> &str {
    s.trim_start_matches(is_space)
}

fn number(word: &str, what: &str) -> Result<u64, String> {
    word.parse::<u64>()
        .map_err(|_| format!("bad {what} \"{}\": not a number", shorten(word)))
}

fn id_and_text(rest: &str, what: &str, usage: &str) -> Result<(u64, String), String> {
    let (id, rest) = word(rest);
    if id.is_empty() {
        return Err(format!("usage: {usage}"));
    }
    let id = number(id, what)?;
    let text = text(rest);
    if text.is_empty() {
        return Err(format!("usage: {usage} (the text is missing)"));
    }
    Ok((id, text.to_owned()))
}

fn only_id(rest: &str, what: &str, usage: &str) -> Result<u64, String> {
    let (id, rest) = word(rest);
    if id.is_empty() || !text(rest).is_empty() {
        return Err(format!("usage: {usage}"));
    }
    number(id, what)
}

fn no_args(rest: &str, word: &str, command: Command) -> Result<Command, String> {
    if text(rest).is_empty() {
        Ok(command)
    } else {
        Err(format!("{word} takes no arguments"))
    }
}

/// A client's word as quoted back: at most 32 characters.
fn shorten(word: &str) -> String {
    let mut short: String = word.chars().take(32).collect();
    if short.len() < word.len() {
        short.push('…');
    }
    crate::legacy::format::escape(&short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_their_arguments() {
        assert_eq!(
            parse("send 7 hello  there ").unwrap(),
            Command::Send {
                to: 7,
                text: "hello  there ".to_owned()
            }
        );
        assert_eq!(
            parse("LOGIN ada correct horse").unwrap(),
            Command::Login {
                name: "ada".to_owned(),
                password: "correct horse".to_owned()
            }
        );
        assert_eq!(
            parse("CreateGroup rust").unwrap(),
            Command::CreateGroup {
                name: "rust".to_owned(),
                description: String::new()
            }
        );
        assert_eq!(
            parse("SENDGROUP\t3\tx").unwrap(),
            Command::SendGroup {
                group: 3,
                text: "x".to_owned()
            }
        );
        assert_eq!(parse(" pull").unwrap(), Command::Pull);
        assert_eq!(
            parse("JOINGROUP 4").unwrap(),
            Command::JoinGroup { group: 4 }
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |line| parse(line).unwrap_err();
        assert!(err("FROB 1").starts_with("unknown command \"FROB\""));
        assert_eq!(err("SEND abc hi"), "bad uid \"abc\": not a number");
        assert_eq!(
            err("SEND 5"),
            "usage: SEND <uid> <text> (the text is missing)"
        );
        assert_eq!(err("ADDFRIEND"), "usage: ADDFRIEND <uid>");
        assert_eq!(err("ADDFRIEND 1 2"), "usage: ADDFRIEND <uid>");
        assert_eq!(err("JOINGROUP -1"), "bad gid \"-1\": not a number");
        assert_eq!(err("LOGIN ada"), "usage: LOGIN <name> <password>");
        assert_eq!(err("PULL now"), "PULL takes no arguments");
        assert!(err(&"Z".repeat(100)).len() < 200);
    }
}
