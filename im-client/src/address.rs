//! Where a gateway listens, as people write it: `host:port`, `tcp://`, `tls://`, `ws://`
//! and `wss://`.

use std::fmt;

use crate::Error;

/// Where a gateway listens, and whether the connection is wrapped in TLS.
///
/// TLS is terminated in front of the gateways (by nginx in the cluster layout): the bytes
/// inside are the same TCP frames or WebSocket messages as without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `tcp://host:port` or a bare `host:port`; `tls://host:port` when `tls`.
    Tcp {
        /// `host:port` (an IPv6 host in brackets).
        host_port: String,
        /// Whether to speak TLS.
        tls: bool,
    },
    /// `ws://host[:port]/path`; `wss://host[:port]/path` when `tls`.
    WebSocket {
        /// The URL as given.
        url: String,
        /// Whether to speak TLS.
        tls: bool,
    },
}

impl Address {
    /// Reads `host:port`, `tcp://host:port`, `tls://host:port`, `ws://host[:port]/path` or
    /// `wss://host[:port]/path` (a WebSocket port defaults to 80, or 443 for `wss://`).
    ///
    /// # Errors
    /// [`Error::Address`] for another scheme, a missing host, or a missing or bad port.
    pub fn parse(address: &str) -> Result<Address, Error> {
        let invalid = |reason| Error::Address {
            address: address.to_owned(),
            reason,
        };
        let address = address.trim();
        let (scheme, rest) = address.split_once("://").unwrap_or(("tcp", address));
        match scheme {
            "ws" | "wss" => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                match split_authority(authority) {
                    Some((_, Some(Err(())))) => Err(invalid("bad port")),
                    Some(_) => Ok(Address::WebSocket {
                        url: address.to_owned(),
                        tls: scheme == "wss",
                    }),
                    None => Err(invalid("no host")),
                }
            }
            "tcp" | "tls" => match split_authority(rest) {
                Some((_, Some(Ok(_)))) => Ok(Address::Tcp {
                    host_port: rest.to_owned(),
                    tls: scheme == "tls",
                }),
                _ => Err(invalid("expected host:port")),
            },
            _ => Err(invalid(
                "the scheme must be tcp://, tls://, ws:// or wss://",
            )),
        }
    }

    /// Whether the connection is wrapped in TLS.
    pub fn is_tls(&self) -> bool {
        match self {
            Address::Tcp { tls, .. } | Address::WebSocket { tls, .. } => *tls,
        }
    }

    /// The host as a TLS certificate names it: a DNS name or an IP address (no brackets).
    pub fn host(&self) -> &str {
        let authority = self.authority();
        let host = split_authority(authority).map_or(authority, |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The `host:port` to open the TCP connection to.
    pub fn host_port(&self) -> String {
        match self {
            Address::Tcp { host_port, .. } => host_port.clone(),
            Address::WebSocket { tls, .. } => {
                let authority = self.authority();
                match split_authority(authority) {
                    Some((_, Some(_))) => authority.to_owned(),
                    _ => format!("{authority}:{}", if *tls { 443 } else { 80 }),
                }
            }
        }
    }

    fn authority(&self) -> &str {
        match self {
            Address::Tcp { host_port, .. } => host_port,
            Address::WebSocket { url, .. } => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
                rest.split(['/', '?', '#']).next().unwrap_or_default()
            }
        }
    }
}

/// A host and, when one is given, its port (`Err` when it is no number).
type Authority<'a> = (&'a str, Option<Result<u16, ()>>);

/// Splits `host[:port]` (an IPv6 host in brackets); `None` without a usable host.
fn split_authority(authority: &str) -> Option<Authority<'_>> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let after = &rest[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return None,
            };
            (&authority[..end + 2], port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host == "[]" || host.contains(['@', ' ']) {
        return None;
    }
    Some((host, port.map(|port| port.parse::<u16>().map_err(drop))))
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host_port, tls } => {
                let scheme = if *tls { "tls" } else { "tcp" };
                write!(f, "{scheme}://{host_port}")
            }
            Address::WebSocket { url, .. } => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host_port: &str, tls: bool) -> Address {
        Address::Tcp {
            host_port: host_port.into(),
            tls,
        }
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("127.0.0.1:6000").unwrap(),
            tcp("127.0.0.1:6000", false)
        );
        assert_eq!(Address::parse("tcp://h:1").unwrap(), tcp("h:1", false));
        assert_eq!(Address::parse("tls://h:1").unwrap(), tcp("h:1", true));
        assert_eq!(
            Address::parse("ws://127.0.0.1:6080/ws").unwrap(),
            Address::WebSocket {
                url: "ws://127.0.0.1:6080/ws".into(),
                tls: false
            }
        );
        assert!(Address::parse("wss://h/ws").unwrap().is_tls());
        for bad in [
            "",
            "host",
            "host:x",
            ":6000",
            "tls://h",
            "http://h:1",
            "ws://",
            "wss://h:x/ws",
            "ws://u@h/ws",
            "[::1]",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Address::parse("h:1").unwrap().to_string(), "tcp://h:1");
        assert_eq!(
            Address::parse("tls://h:1").unwrap().to_string(),
            "tls://h:1"
        );
    }

    #[test]
    fn hosts_and_ports_to_connect_to() {
        let parts = |s: &str| {
            let address = Address::parse(s).unwrap();
            (address.host().to_owned(), address.host_port())
        };
        let owned = |host: &str, host_port: &str| (host.to_owned(), host_port.to_owned());
        assert_eq!(
            parts("tls://im.example:6443"),
            owned("im.example", "im.example:6443")
        );
        assert_eq!(
            parts("wss://im.example/ws"),
            owned("im.example", "im.example:443")
        );
        assert_eq!(
            parts("ws://10.0.0.1/ws?x=1"),
            owned("10.0.0.1", "10.0.0.1:80")
        );
        assert_eq!(parts("wss://[::1]:8443/ws"), owned("::1", "[::1]:8443"));
        assert_eq!(parts("tls://[::1]:6443"), owned("::1", "[::1]:6443"));
    }
}
