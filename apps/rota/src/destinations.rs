//! Where the `http` handler may send a task's request (`http.allow`), so that whoever can
//! create tasks cannot make the workers call into places they should not reach.
//!
//! With `http.allow` empty, any address is allowed except link-local ones (`169.254.0.0/16`,
//! `fe80::/10`: cloud metadata services live there) and the known metadata addresses outside
//! them (`100.100.100.200`, `fd00:ec2::254`). Once it lists anything, only what it lists is
//! allowed: networks (`10.0.0.0/8`, `2001:db8::/32`, a single address) and host names (exact,
//! or `*.example.com` for its subdomains); a listed host name still may not resolve to a
//! link-local or metadata address unless a listed network inside those ranges holds it (a
//! `0.0.0.0/0` does not open them). The address is checked
//! after DNS resolution, and the connection is made to the address checked, so a name that
//! resolves differently the second time cannot get around it.

use ipnet::IpNet;
use std::net::IpAddr;

/// The parsed `http.allow`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Destinations {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
}

impl Destinations {
    /// Parses the entries of `http.allow`; the error names the entry.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut out = Self::default();
        for entry in entries {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                out.networks.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                out.networks.push(IpNet::from(ip));
            } else if is_host_pattern(entry) {
                out.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "{entry:?} is neither a network (10.0.0.0/8), an address nor a host name \
                     (hooks.example.com, *.example.com)"
                ));
            }
        }
        Ok(out)
    }

    /// Whether a request to `host` (as the URL names it) may connect to `ip`; `Err` says why
    /// not.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let special = metadata_or_link_local(ip);
        // A link-local or metadata address must be listed as such: a network that merely
        // holds it (`0.0.0.0/0`, `169.0.0.0/8`) does not open it.
        let listed = self.networks.iter().any(|n| {
            n.contains(&ip)
                && (!special
                    || (metadata_or_link_local(n.network())
                        && n.prefix_len() >= if ip.is_ipv4() { 16 } else { 10 }))
        });
        if listed {
            return Ok(());
        }
        let open = self.networks.is_empty() && self.hosts.is_empty();
        if !open && !self.host_listed(host) {
            return Err(format!("{host} ({ip}) is not in http.allow"));
        }
        if special {
            return Err(format!(
                "{host} resolves to {ip}, a link-local or cloud metadata address: list its \
                 network in http.allow to call it"
            ));
        }
        Ok(())
    }

    /// Why `host` is refused whatever it resolves to: the list names only hosts, and not this
    /// one. Refused before any DNS lookup, so an unlisted name never reaches a resolver.
    pub fn refuses_name(&self, host: &str) -> Option<String> {
        (self.networks.is_empty() && !self.hosts.is_empty() && !self.host_listed(host))
            .then(|| format!("{host} is not in http.allow"))
    }

    fn host_listed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => *pattern == host,
            })
    }
}

fn is_host_pattern(entry: &str) -> bool {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Link-local addresses (where cloud metadata services answer) and the metadata addresses
/// outside them.
fn metadata_or_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return metadata_or_link_local(IpAddr::V4(v4));
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    == "fd00:ec2::254"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("an address")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn open_by_default_but_never_to_metadata_addresses() {
        let open = Destinations::default();
        assert!(open.check("example.com", ip("93.184.216.34")).is_ok());
        assert!(open.check("localhost", ip("127.0.0.1")).is_ok());
        for metadata in [
            "169.254.169.254",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            let err = open.check("h", ip(metadata)).unwrap_err();
            assert!(err.contains("metadata"), "{metadata}: {err}");
        }
    }

    #[test]
    fn a_list_allows_only_what_it_names() {
        let d = Destinations::parse(&[
            "10.0.0.0/8".into(),
            "hooks.example.com".into(),
            "*.internal.example".into(),
            "169.254.10.10".into(),
        ])
        .unwrap();
        assert!(d.check("anything", ip("10.1.2.3")).is_ok());
        assert!(d.check("hooks.example.com", ip("93.184.216.34")).is_ok());
        assert!(d.check("HOOKS.example.com.", ip("93.184.216.34")).is_ok());
        assert!(d.check("a.internal.example", ip("192.168.1.1")).is_ok());
        assert!(d.check("internal.example", ip("192.168.1.1")).is_err());
        assert!(d.check("other.com", ip("93.184.216.34")).is_err());
        // A listed name resolving to a metadata address: refused, unless its network is listed.
        assert!(d.check("hooks.example.com", ip("169.254.169.254")).is_err());
        assert!(d.check("hooks.example.com", ip("169.254.10.10")).is_ok());
        // Only a network inside those ranges opens them, not one that merely holds them.
        let wide = Destinations::parse(&["0.0.0.0/0".into(), "::/0".into()]).unwrap();
        assert!(wide.check("x", ip("93.184.216.34")).is_ok());
        for metadata in ["169.254.169.254", "fe80::1", "100.100.100.200"] {
            assert!(wide.check("x", ip(metadata)).is_err(), "{metadata}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let err = Destinations::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(Destinations::parse(&["http://x".into()]).is_err());
    }
}
