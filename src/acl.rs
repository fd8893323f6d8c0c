//! Destination access control: which resolved addresses and ports the server
//! may connect to. Checked on every resolved address, after DNS, so a name
//! that resolves to a denied address is denied too.

use std::net::{IpAddr, SocketAddr};

/// One rule: an optional network and an optional port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    net: Option<(IpAddr, u8)>,
    ports: Option<(u16, u16)>,
}

impl Rule {
    pub fn new(net: Option<(IpAddr, u8)>, ports: Option<(u16, u16)>) -> Rule {
        Rule { net, ports }
    }

    pub fn matches(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let net_ok = match self.net {
            None => true,
            Some((net, len)) => in_net(ip, net, len),
        };
        let port_ok = match self.ports {
            None => true,
            Some((a, b)) => (a..=b).contains(&addr.port()),
        };
        net_ok && port_ok
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it maps:
/// otherwise it would slip past IPv4 rules.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let Some(shift) = 32u32.checked_sub(len as u32) else {
                return false;
            };
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let Some(shift) = 128u32.checked_sub(len as u32) else {
                return false;
            };
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The server's destination policy.
#[derive(Debug, Clone)]
pub struct Acl {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub default_allow: bool,
}

impl Acl {
    /// No policy: the agent's own connections (direct routes, its servers).
    pub fn any() -> Acl {
        Acl {
            allow: Vec::new(),
            deny: Vec::new(),
            default_allow: true,
        }
    }

    /// `allow` first, then `deny`, then the default.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        if self.allow.iter().any(|r| r.matches(addr)) {
            return true;
        }
        if self.deny.iter().any(|r| r.matches(addr)) {
            return false;
        }
        self.default_allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Destinations;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_deny_local_and_metadata() {
        let acl = Destinations::default().acl();
        for denied in [
            "127.0.0.1:80",
            "127.9.9.9:1",
            "[::1]:22",
            "169.254.169.254:80",
            "[fe80::1]:80",
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
        ] {
            assert!(!acl.permits(sa(denied)), "{denied}");
        }
        for allowed in ["93.184.216.34:443", "[2001:db8::1]:443", "10.1.2.3:22"] {
            assert!(acl.permits(sa(allowed)), "{allowed}");
        }
    }

    #[test]
    fn allow_overrides_and_ports() {
        let acl = Acl {
            allow: vec!["127.0.0.1:5432".parse().unwrap()],
            deny: vec!["127.0.0.0/8".parse().unwrap(), "*:25".parse().unwrap()],
            default_allow: true,
        };
        assert!(acl.permits(sa("127.0.0.1:5432")));
        assert!(!acl.permits(sa("127.0.0.1:5433")));
        assert!(!acl.permits(sa("8.8.8.8:25")));
        let only = Acl {
            allow: vec!["*:443".parse().unwrap()],
            deny: vec![],
            default_allow: false,
        };
        assert!(only.permits(sa("1.1.1.1:443")) && !only.permits(sa("1.1.1.1:80")));
        // An IPv4-mapped rule is the IPv4 network it maps, not "everything".
        let mapped = Acl {
            allow: vec!["::ffff:10.0.0.0/104".parse().unwrap()],
            deny: vec!["127.0.0.0/8".parse().unwrap()],
            default_allow: false,
        };
        assert!(mapped.permits(sa("10.9.9.9:1")) && mapped.permits(sa("[::ffff:10.1.1.1]:1")));
        assert!(!mapped.permits(sa("127.0.0.1:1")) && !mapped.permits(sa("11.0.0.1:1")));
    }
}
