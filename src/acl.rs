//! Destination access control: which resolved addresses and ports the server
//! may connect to. Checked on every resolved address, after DNS, so a name
//! that resolves to a denied address is denied too; an IPv6 address that
//! carries an IPv4 address (mapped, compatible, SIIT, NAT64, 6to4, Teredo)
//! is checked as that IPv4 address as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// One rule: an optional network and an optional port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    net: Option<(IpAddr, u8)>,
    ports: Option<(u16, u16)>,
}

impl Rule {
    pub(crate) fn matches(&self, addr: SocketAddr) -> bool {
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

    /// The network (address, prefix length), `None` for `*`; an
    /// IPv4-mapped network is the IPv4 network it maps.
    pub(crate) fn net(&self) -> Option<(IpAddr, u8)> {
        self.net
    }

    /// The inclusive port range, `None` for any port.
    pub(crate) fn ports(&self) -> Option<(u16, u16)> {
        self.ports
    }
}

/// Parses `IP`, `IP/len`, `IP/len:ports`, `[v6/len]:ports`, `*:ports`, where
/// ports is `N` or `N-M`.
impl FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a rule like 10.0.0.0/8, 10.0.0.0/8:22, [fe80::/10]:443, *:25 or *:6000-6063"
            )
        };
        let s = s.trim();
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
            let ports = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (Some(inner), ports)
        } else if let Some(rest) = s.strip_prefix('*') {
            match rest {
                "" => (None, None),
                p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else if s.matches(':').count() >= 2 {
            (Some(s), None) // a bare IPv6 network
        } else {
            match s.split_once(':') {
                Some((n, p)) => (Some(n), Some(p)),
                None => (Some(s), None),
            }
        };
        let net = match net {
            None => None,
            Some(n) => {
                let (ip, len) = match n.split_once('/') {
                    Some((ip, len)) => (ip, Some(len)),
                    None => (n, None),
                };
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len: u8 = match len {
                    None => max,
                    Some(l) => l.parse().ok().filter(|&l| l <= max).ok_or_else(bad)?,
                };
                // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4
                // network it maps, as addresses are compared.
                match ip {
                    IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                        let v4 = v6.to_ipv4_mapped().ok_or_else(bad)?;
                        let len = len.checked_sub(96).ok_or_else(|| {
                            format!("`{s}`: an IPv4-mapped network needs a prefix of /96 or longer")
                        })?;
                        Some((IpAddr::V4(v4), len))
                    }
                    _ => Some((ip, len)),
                }
            }
        };
        let ports = match ports {
            None => None,
            Some(p) => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                let a: u16 = a.parse().map_err(|_| bad())?;
                let b: u16 = b.parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                Some((a, b))
            }
        };
        Ok(Rule { net, ports })
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it maps:
/// otherwise it would slip past IPv4 rules.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The IPv4 addresses an IPv6 address may reach, by the translation and
/// tunnelling schemes a host or its network may apply to it. A gateway on
/// the path turns each of these into IPv4 traffic, so a rule written for
/// IPv4 (the built-in `127.0.0.0/8`, `169.254.0.0/16`) must see them.
///
/// - `::a.b.c.d`, IPv4-compatible (RFC 4291 section 2.5.5.1, deprecated but
///   still routed by some stacks; not `::` and `::1`); `::ffff:a.b.c.d`, IPv4-mapped, is
///   handled by [`canonical`].
/// - `::ffff:0:a.b.c.d`, SIIT (RFC 7915 / RFC 2765).
/// - `64:ff9b::a.b.c.d`, the NAT64 well-known prefix (RFC 6052 section 2.1).
/// - `64:ff9b:1::/48`, local-use NAT64 (RFC 8215): its prefix may be /48,
///   /56, /64 or /96 inside that block and the address does not say which,
///   so the IPv4 address under each RFC 6052 section 2.2 layout counts.
/// - `2002:AABB:CCDD::/48`, 6to4 (RFC 3056 section 2).
/// - `2001:0::/32`, Teredo (RFC 4380 section 4): the server address in bits
///   32-63 and the client address, obfuscated (inverted), in the last 32.
pub(crate) fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let b = v6.octets();
    let seg = v6.segments();
    let v4 = |o: [u8; 4]| Ipv4Addr::from(o);
    let last = v4([b[12], b[13], b[14], b[15]]);
    let mut out = Vec::new();
    // `::` and `::1` are IPv6's own unspecified and loopback addresses.
    if b[..12].iter().all(|&x| x == 0) && u32::from(last) > 1 {
        out.push(last);
    }
    if seg[..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0 {
        out.push(last);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(last);
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 section 2.2: bits 64-71 (octet 8) are always skipped.
        out.push(v4([b[6], b[7], b[9], b[10]])); // /48
        out.push(v4([b[7], b[9], b[10], b[11]])); // /56
        out.push(v4([b[9], b[10], b[11], b[12]])); // /64
        out.push(last); // /96
    }
    if seg[0] == 0x2002 {
        out.push(v4([b[2], b[3], b[4], b[5]]));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        out.push(v4([b[4], b[5], b[6], b[7]]));
        out.push(v4([!b[12], !b[13], !b[14], !b[15]]));
    }
    out
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
pub(crate) struct Acl {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub default_allow: bool,
}

impl Acl {
    /// No policy: the agent's own connections (direct routes, its servers).
    pub(crate) fn any() -> Acl {
        Acl {
            allow: Vec::new(),
            deny: Vec::new(),
            default_allow: true,
        }
    }

    /// Permitted only when the address and every IPv4 address it embeds
    /// (see [`embedded_v4`]) are permitted: a deny rule for an IPv4
    /// network cannot be dodged by writing the address in an IPv6 form, and
    /// an allow rule for one form does not open the others.
    pub(crate) fn permits(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let views = match ip {
            IpAddr::V6(v6) => embedded_v4(v6),
            IpAddr::V4(_) => Vec::new(),
        };
        self.permits_one(SocketAddr::new(ip, addr.port()))
            && views
                .into_iter()
                .all(|v4| self.permits_one(SocketAddr::new(IpAddr::V4(v4), addr.port())))
    }

    /// `allow` first, then `deny`, then the default.
    fn permits_one(&self, addr: SocketAddr) -> bool {
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
    use crate::config::DEFAULT_DENY;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_deny_local_and_metadata() {
        // The server's policy when `destinations:` is left out.
        let acl = Acl {
            allow: Vec::new(),
            deny: DEFAULT_DENY.iter().map(|r| r.parse().unwrap()).collect(),
            default_allow: true,
        };
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
        // IPv4 reached through an IPv6 form (issue 11.3).
        for denied in [
            "[::127.0.0.1]:80",
            "[::ffff:0:127.0.0.1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b::127.0.0.1]:22",
            "[64:ff9b:1:a9fe:a9:fe00::]:80",   // local-use /48 layout
            "[64:ff9b:1:7f:0:100::]:80",       // local-use /56 layout
            "[64:ff9b:1::7f:0:1:0]:80",        // local-use /64 layout
            "[64:ff9b:1::169.254.169.254]:80", // local-use /96 layout
            "[2002:7f00:1::]:80",
            "[2002:a9fe:a9fe::1]:80",
            // Teredo: server 127.0.0.1, or client 169.254.169.254 inverted.
            "[2001:0:7f00:1::1]:80",
            "[2001:0:4136:e378:8000:63bf:5601:5601]:80",
        ] {
            assert!(!acl.permits(sa(denied)), "{denied}");
        }
        for allowed in [
            "93.184.216.34:443",
            "[2001:db8::1]:443",
            "10.1.2.3:22",
            "[64:ff9b::93.184.216.34]:443",
            "[2002:5db8:d822::1]:443",
            "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:443",
        ] {
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
    #[test]
    fn rules() {
        for ok in [
            "10.0.0.0/8",
            "10.0.0.0/8:22",
            "[fe80::/10]:443",
            "*:25",
            "*:6000-6063",
            "::1",
            "1.2.3.4",
        ] {
            ok.parse::<Rule>().unwrap();
        }
        for bad in [
            "10.0.0.0/33",
            "x",
            "*:70000",
            "1.2.3.4:9-1",
            "[::1",
            "::ffff:10.0.0.0/64",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }
}
