//! Routing: the first rule whose every condition matches decides; otherwise
//! the default. Names are matched as the client gave them and never
//! resolved here, so a proxied name's lookup happens at the server.

use crate::config::agent::{Action, Agent, Route};
use crate::dial;
use crate::proto::socks5::Addr;

/// The host part as text: the name lower-cased without a trailing dot, or
/// the IP literal.
fn host_text(dest: &Addr) -> String {
    match dest {
        Addr::Ip(sa) => crate::acl::canonical(sa.ip()).to_string(),
        Addr::Domain(name, _) => String::from_utf8_lossy(name)
            .trim_end_matches('.')
            .to_ascii_lowercase(),
    }
}

fn matches(r: &Route, dest: &Addr, host: &str) -> bool {
    let suffix_ok = r.domain_suffix.is_empty()
        || (matches!(dest, Addr::Domain(..))
            && r.domain_suffix.iter().any(|s| {
                host == s
                    || (host.len() > s.len()
                        && host.ends_with(s.as_str())
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.')
            }));
    let host_ok = r.host.is_empty() || r.host.iter().any(|h| h == host);
    let cidr_ok = r.cidr.is_empty()
        || match dest {
            Addr::Ip(sa) => r.cidr.iter().any(|c| c.matches(*sa)),
            Addr::Domain(..) => false,
        };
    let port = dest.port();
    let port_ok = r.port.is_empty() || r.port.iter().any(|p| p.contains(&port));
    suffix_ok && host_ok && cidr_ok && port_ok
}

/// Decides what to do with `dest`: the action, the group for `proxy`, and
/// which rule decided (`None`: the default).
pub(crate) fn decide<'a>(
    routes: &'a [Route],
    default: Action,
    default_group: &'a str,
    dest: &Addr,
) -> (Action, &'a str, Option<usize>) {
    let host = host_text(dest);
    for (i, r) in routes.iter().enumerate() {
        if matches(r, dest, &host) {
            return (r.action, &r.group, Some(i));
        }
    }
    (default, default_group, None)
}

/// What the agent does with `dest` as a client gave it: the destination as
/// routed (an IP literal written as a name is the IP it is), the action,
/// the group for `proxy` and the deciding rule. `None`: a numeric name that
/// is not an IP literal, which getaddrinfo would turn into an address
/// behind the rules' back, so it is refused.
pub(crate) fn choose<'a>(
    cfg: &'a Agent,
    dest: &Addr,
) -> Option<(Addr, Action, &'a str, Option<usize>)> {
    let dest = match dial::classify(dest) {
        dial::Name::Ip(sa) => Addr::Ip(sa),
        dial::Name::Host => dest.clone(),
        dial::Name::Numeric => return None,
    };
    let (action, group, rule) = decide(&cfg.routes, cfg.default, &cfg.default_group, &dest);
    Some((dest, action, group, rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(action: Action) -> Route {
        Route {
            domain_suffix: vec![],
            host: vec![],
            cidr: vec![],
            port: vec![],
            action,
            group: "default".into(),
        }
    }

    #[test]
    fn first_match_wins() {
        let mut a = route(Action::Direct);
        a.domain_suffix = vec!["corp.example".into()];
        let mut b = route(Action::Reject);
        b.cidr = vec!["10.0.0.0/8".parse().unwrap()];
        b.port = vec![22..=22];
        let mut c = route(Action::Proxy);
        c.host = vec!["10.1.2.3".into()];
        let routes = [a, b, c];
        let d = |dest: Addr| decide(&routes, Action::Proxy, "default", &dest).0;
        assert_eq!(
            d(Addr::Domain(b"git.CORP.example.".to_vec(), 443)),
            Action::Direct
        );
        assert_eq!(
            d(Addr::Domain(b"corp.example".to_vec(), 443)),
            Action::Direct
        );
        assert_eq!(
            d(Addr::Domain(b"notcorp.example".to_vec(), 443)),
            Action::Proxy
        );
        assert_eq!(d(Addr::Ip("10.1.2.3:22".parse().unwrap())), Action::Reject);
        assert_eq!(d(Addr::Ip("10.1.2.3:80".parse().unwrap())), Action::Proxy);
        // Names are never resolved for CIDR rules.
        assert_eq!(d(Addr::Domain(b"ten.example".to_vec(), 22)), Action::Proxy);
        assert_eq!(
            decide(
                &routes,
                Action::Direct,
                "default",
                &Addr::Ip("1.1.1.1:1".parse().unwrap())
            )
            .2,
            None
        );
    }
}
