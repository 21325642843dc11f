//! What this host is called and the address callers reach it at: the parts of an
//! [`Instance`](super::Instance) a server cannot take from its listener alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Addresses used only to ask the kernel which local address routes towards the network.
/// Documentation ranges (RFC 5737, RFC 3849): nothing answers there, and nothing is sent.
const PROBE_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 9);
const PROBE_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);

/// The address to advertise for a listener bound to `bound`.
///
/// A listener bound to one address is reached there, so that address is returned as is. One
/// bound to a wildcard (`0.0.0.0`, `[::]`) accepts on every interface, and the wildcard is
/// no address anyone can dial; this returns, with the bound port:
/// 1. the local address of the host's route to the network (the interface a default route
///    leaves by; found by connecting a UDP socket, which sends nothing);
/// 2. failing that, an address the host name resolves to that is not loopback;
/// 3. failing that, loopback: only local callers can reach it, which is all there can be
///    on a host without a network.
///
/// A host with several networks may need another address than the one its default route
/// uses; servers should let operators name it (the examples take `--advertise HOST:PORT`).
/// Step 2 may wait on a name lookup.
///
/// ```
/// use std::net::SocketAddr;
/// use mprpc::discovery::advertise_addr;
///
/// let bound: SocketAddr = "10.0.0.5:7000".parse().unwrap();
/// assert_eq!(advertise_addr(bound), bound);
/// let wildcard: SocketAddr = "0.0.0.0:7000".parse().unwrap();
/// let advertised = advertise_addr(wildcard);
/// assert!(!advertised.ip().is_unspecified());
/// assert_eq!(advertised.port(), 7000);
/// ```
pub fn advertise_addr(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // A `[::]` listener also accepts IPv4 on a dual-stack host, so an IPv4 route will do
    // when there is no IPv6 one; a `0.0.0.0` listener can only be reached over IPv4.
    let v6 = bound.is_ipv6();
    let ip = routed_ip(PROBE_V6)
        .filter(|_| v6)
        .or_else(|| routed_ip(PROBE_V4))
        .or_else(|| resolved_ip(v6))
        .unwrap_or(if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
    SocketAddr::new(ip, bound.port())
}

/// The local address the kernel would send from towards `probe`, if it has a route there.
fn routed_ip(probe: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match probe {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    // UDP connect only chooses the route and so the source address; no packet leaves.
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    usable(ip).then_some(ip)
}

/// A non-loopback address the host name resolves to, IPv4 unless `v6` allows either.
fn resolved_ip(v6: bool) -> Option<IpAddr> {
    (hostname(), 0)
        .to_socket_addrs()
        .ok()?
        .map(|addr| addr.ip())
        .find(|ip| usable(*ip) && (v6 || ip.is_ipv4()))
}

fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_loopback()
}

/// This host's name, as the kernel reports it, else as the environment does, else `host`.
/// Cut to characters that are safe in an instance id and a ZooKeeper node name.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        let name: String = name
            .trim()
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() {
            "host".to_owned()
        } else {
            name
        }
    })
}

/// A new instance id, `<hostname>-<pid>-<8 hex digits>`. The digits start at a random value
/// per process and count up per id, so ids of one process never repeat, and processes that
/// share a host name and pid (containers on the host's network namespace, a restart that
/// got its predecessor's pid) differ but for a 1 in 2³² chance.
pub(super) fn instance_id() -> String {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(crate::random::u64() as u32));
    let n = next.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n:08x}", hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_address_is_advertised_as_bound() {
        for bound in ["10.0.0.5:7000", "127.0.0.1:1", "[fe80::1]:7000", "[::1]:9"] {
            let bound: SocketAddr = bound.parse().unwrap();
            assert_eq!(advertise_addr(bound), bound);
        }
    }

    #[test]
    fn a_wildcard_is_advertised_as_a_dialable_address_with_the_same_port() {
        for bound in ["0.0.0.0:7000", "[::]:7001"] {
            let bound: SocketAddr = bound.parse().unwrap();
            let advertised = advertise_addr(bound);
            assert!(!advertised.ip().is_unspecified(), "{bound} → {advertised}");
            assert_eq!(advertised.port(), bound.port());
        }
        assert!(advertise_addr("0.0.0.0:1".parse().unwrap()).is_ipv4());
    }

    #[test]
    fn instance_ids_differ_and_are_usable_node_names() {
        let ids: Vec<String> = (0..1000).map(|_| instance_id()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        let prefix = format!("{}-{}-", hostname(), std::process::id());
        for id in &ids {
            assert!(id.starts_with(&prefix), "{id}");
            assert!(!id.contains('/') && id != "." && id != "..", "{id}");
        }
    }
}
