//! What a typed line means: a `/command` with its arguments, or text for the current
//! conversation. Parsing never fails loudly: a wrong line becomes a one-line usage error.

/// One line of input, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// Nothing (an empty or blank line).
    Empty,
    /// Text for the current conversation.
    Text(String),
    Help,
    Register {
        name: String,
        password: String,
    },
    Login {
        name: String,
        password: String,
    },
    Logout,
    Users(String),
    Add(String),
    Requests,
    Accept(u64),
    Reject(u64),
    Friends,
    Block(String),
    Chat(String),
    GroupCreate {
        name: String,
        members: Vec<String>,
    },
    GroupJoin(u64),
    GroupMembers,
    Groups,
    Group(u64),
    History(u32),
    Unread,
    Read,
    Recall(u64),
    Edit {
        msg_id: u64,
        text: String,
    },
    Quit,
}

/// Entries `/history` shows without a count.
pub(crate) const HISTORY_DEFAULT: u32 = 20;
/// The most entries `/history` asks for.
pub(crate) const HISTORY_MAX: u32 = 200;

/// The help text: one line per command.
pub(crate) const HELP: &str = "\
commands:
  /register <name> <password>   create an account
  /login <name> <password>      log in
  /logout                       log out
  /users <name>                 look a user up
  /add <name>                   ask to be friends
  /requests                     friend requests to you
  /accept <id>, /reject <id>    answer a friend request
  /friends                      your friends, online or not
  /block <name>                 block a user
  /chat <name>                  talk to a friend
  /group create <name> [members...]   make a group (members by name)
  /group join <id>              join a group
  /group members                members of the current group
  /groups                       your groups
  /g <group id>                 talk in a group
  /history [n]                  the last n messages here (default 20)
  /unread                       conversations with unread messages
  /read                         mark this conversation read
  /recall <msg id>              take back a message of yours
  /edit <msg id> <text>         change a message of yours
  /quit                         leave
any other line goes to the current conversation (start it with // to send a leading /);
times are UTC";

/// Reads one line; `Err` is a one-line message for the person typing.
pub(crate) fn parse(line: &str) -> Result<Input, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Input::Empty);
    }
    if let Some(text) = line.strip_prefix("//") {
        return Ok(Input::Text(format!("/{text}")));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Input::Text(line.to_owned()));
    };
    let (name, rest) = split_word(command);
    let words: Vec<&str> = rest.split_whitespace().collect();
    let input = match (name, words.as_slice()) {
        ("help" | "h" | "?", _) => Input::Help,
        ("quit" | "exit" | "q", []) => Input::Quit,
        ("register", [name, password]) => Input::Register {
            name: (*name).to_owned(),
            password: (*password).to_owned(),
        },
        ("login", [name, password]) => Input::Login {
            name: (*name).to_owned(),
            password: (*password).to_owned(),
        },
        ("logout", []) => Input::Logout,
        ("users", [name]) => Input::Users((*name).to_owned()),
        ("add", [name]) => Input::Add((*name).to_owned()),
        ("requests", []) => Input::Requests,
        ("accept", [id]) => Input::Accept(number(id)?),
        ("reject", [id]) => Input::Reject(number(id)?),
        ("friends", []) => Input::Friends,
        ("block", [name]) => Input::Block((*name).to_owned()),
        ("chat", [name]) => Input::Chat((*name).to_owned()),
        ("group", ["create", name, members @ ..]) => Input::GroupCreate {
            name: (*name).to_owned(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        },
        ("group", ["join", id]) => Input::GroupJoin(number(id)?),
        ("group", ["members"]) => Input::GroupMembers,
        ("groups", []) => Input::Groups,
        ("g", [id]) => Input::Group(number(id)?),
        ("history", []) => Input::History(HISTORY_DEFAULT),
        ("history", [n]) => Input::History(number(n)?.clamp(1, u64::from(HISTORY_MAX)) as u32),
        ("unread", []) => Input::Unread,
        ("read", []) => Input::Read,
        ("recall", [id]) => Input::Recall(number(id)?),
        ("edit", [id, _, ..]) => Input::Edit {
            msg_id: number(id)?,
            text: split_word(rest.trim_start()).1.to_owned(),
        },
        _ => return Err(usage(name)),
    };
    Ok(input)
}

/// The first word and what follows it (one separating space or tab removed).
fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(at) => {
            let rest = &s[at..];
            let after = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
            (&s[..at], &rest[after..])
        }
        None => (s, ""),
    }
}

fn number(word: &str) -> Result<u64, String> {
    word.trim_start_matches('#')
        .parse()
        .map_err(|_| format!("not a number: {}", shorten(word)))
}

/// How a command is used, or that there is no such command.
fn usage(name: &str) -> String {
    let usage = match name {
        "register" => "/register <name> <password>",
        "login" => "/login <name> <password>",
        "logout" => "/logout",
        "users" => "/users <name>",
        "add" => "/add <name>",
        "requests" => "/requests",
        "accept" => "/accept <request id>",
        "reject" => "/reject <request id>",
        "friends" => "/friends",
        "block" => "/block <name>",
        "chat" => "/chat <name>",
        "group" => "/group create <name> [members...] | /group join <id> | /group members",
        "groups" => "/groups",
        "g" => "/g <group id>",
        "history" => "/history [n]",
        "unread" => "/unread",
        "read" => "/read",
        "recall" => "/recall <msg id>",
        "edit" => "/edit <msg id> <text>",
        "quit" | "exit" | "q" => "/quit",
        _ => return format!("unknown command /{} (try /help)", shorten(name)),
    };
    format!("usage: {usage}")
}

/// At most 40 characters of `s`, for echoing input back.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_nothing_and_other_lines_are_text() {
        for blank in ["", " ", "\t", "\r\n", "   \n"] {
            assert_eq!(parse(blank), Ok(Input::Empty), "{blank:?}");
        }
        assert_eq!(parse("hello there"), Ok(Input::Text("hello there".into())));
        assert_eq!(
            parse("  indented\r\n"),
            Ok(Input::Text("  indented".into()))
        );
        assert_eq!(parse("//etc/hosts"), Ok(Input::Text("/etc/hosts".into())));
    }

    #[test]
    fn commands_with_their_arguments() {
        let login = Input::Login {
            name: "alice".into(),
            password: "pw".into(),
        };
        assert_eq!(parse("/login alice pw"), Ok(login));
        assert_eq!(parse("/accept 12"), Ok(Input::Accept(12)));
        assert_eq!(parse("/recall #7"), Ok(Input::Recall(7)));
        assert_eq!(parse("/g 5"), Ok(Input::Group(5)));
        assert_eq!(parse("/history"), Ok(Input::History(HISTORY_DEFAULT)));
        assert_eq!(parse("/history 0"), Ok(Input::History(1)));
        assert_eq!(parse("/history 99999"), Ok(Input::History(HISTORY_MAX)));
        assert_eq!(parse("/quit"), Ok(Input::Quit));
        assert_eq!(parse("/help anything"), Ok(Input::Help));
        let create = Input::GroupCreate {
            name: "devs".into(),
            members: vec!["bob".into(), "carol".into()],
        };
        assert_eq!(parse("/group create devs bob carol"), Ok(create));
        let alone = Input::GroupCreate {
            name: "solo".into(),
            members: vec![],
        };
        assert_eq!(parse("/group create solo"), Ok(alone));
        assert_eq!(parse("/group members"), Ok(Input::GroupMembers));
    }

    #[test]
    fn edit_keeps_its_text_as_typed() {
        let edit = Input::Edit {
            msg_id: 3,
            text: "new  text, spaced".into(),
        };
        assert_eq!(parse("/edit 3 new  text, spaced"), Ok(edit));
        assert_eq!(parse("/edit 3"), Err("usage: /edit <msg id> <text>".into()));
    }

    #[test]
    fn mistakes_get_one_line_of_help() {
        assert_eq!(
            parse("/login alice"),
            Err("usage: /login <name> <password>".into())
        );
        assert_eq!(
            parse("/login a b c"),
            Err("usage: /login <name> <password>".into())
        );
        assert_eq!(parse("/accept"), Err("usage: /accept <request id>".into()));
        assert_eq!(parse("/accept x1"), Err("not a number: x1".into()));
        assert_eq!(parse("/accept -1"), Err("not a number: -1".into()));
        assert_eq!(
            parse("/accept 99999999999999999999999"),
            Err("not a number: 99999999999999999999999".into())
        );
        assert_eq!(parse("/group"), Err(usage("group")));
        assert_eq!(parse("/group dance"), Err(usage("group")));
        assert_eq!(
            parse("/frobnicate"),
            Err("unknown command /frobnicate (try /help)".into())
        );
        assert_eq!(parse("/"), Err("unknown command / (try /help)".into()));
        assert_eq!(
            parse("/ login"),
            Err("unknown command / (try /help)".into())
        );
    }

    #[test]
    fn huge_and_strange_lines_do_not_panic() {
        let huge = "x".repeat(1 << 20);
        assert_eq!(parse(&huge), Ok(Input::Text(huge.clone())));
        let err = parse(&format!("/{huge}")).unwrap_err();
        assert!(err.len() < 100, "{err}");
        let err = parse(&format!("/accept {}", "9".repeat(100_000))).unwrap_err();
        assert!(err.len() < 100, "{err}");
        for strange in [
            "/édit ü ñ",
            "/edit 1 ü",
            "/\u{0}",
            "/login \u{200b} x",
            "/g ٣",
            "/\t",
            "/edit\t1\tx",
            "/edit\u{3000}1\u{3000}全角",
            "/\u{3000}",
        ] {
            let _ = parse(strange);
        }
        assert_eq!(
            parse("/edit\u{3000}1\u{3000}全角"),
            Ok(Input::Edit {
                msg_id: 1,
                text: "全角".into()
            })
        );
        assert_eq!(
            parse("/edit\t1\tx"),
            Ok(Input::Edit {
                msg_id: 1,
                text: "x".into()
            })
        );
        assert_eq!(
            parse("/edit 1 ü"),
            Ok(Input::Edit {
                msg_id: 1,
                text: "ü".into()
            })
        );
    }
}
