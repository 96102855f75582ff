//! Edge protection in the config: source access lists (`[dataplane.acl]`, `[service.acl]`),
//! per-source rate limits of new connections (`[service.rate_limit]`) and the SYN-flood guard
//! (`[dataplane] flood_threshold`). The kernel enforces them (`lb-ebpf`'s `acl`, `rate_limit`
//! and `flood`); this module validates them with located errors.

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, error::Locator};

/// SYNs starting new flows per second on one CPU above which that CPU stops writing them to
/// the flow tables. A busy web edge opens a few thousand connections per second per core; one
/// core can insert about a million per second before inserts alone saturate it. At 25,000 per
/// second a 262,144-entry flow table still turns over no faster than every 10 s per CPU, so
/// idle keep-alive connections outlive a flood.
pub const DEFAULT_FLOOD_THRESHOLD: u32 = 25_000;

/// Highest `connections_per_second` (the kernel's refill arithmetic stays within 64 bits).
pub const MAX_RATE: u32 = 10_000_000;

/// What a refused packet gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Dropped silently (and counted): the default, which tells a scanner nothing.
    #[default]
    Drop,
    /// A TCP RST from XDP, so a legitimate but unwelcome client fails at once. UDP is dropped.
    Reset,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcl {
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub action: Refusal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub connections_per_second: Spanned<u32>,
    pub burst: Option<Spanned<u32>>,
    pub ipv4_prefix: Option<Spanned<u8>>,
    pub ipv6_prefix: Option<Spanned<u8>>,
    pub exempt: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub action: Refusal,
}

/// Source access lists of one scope. Deny wins where an allow and a deny prefix overlap; an
/// allow list, when given, refuses every source it does not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub action: Refusal,
}

impl Acl {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The (prefix, allowed) entries to write so that a longest-prefix match gives deny-wins:
    /// every deny prefix, and the allow prefixes no deny prefix covers.
    pub fn entries(&self) -> Vec<(IpNet, bool)> {
        let mut out: Vec<(IpNet, bool)> = self.deny.iter().map(|d| (*d, false)).collect();
        for a in &self.allow {
            if !self.deny.iter().any(|d| d.contains(a)) && !out.contains(&(*a, true)) {
                out.push((*a, true));
            }
        }
        out
    }
}

/// Counts the prefixes written into the access-list tries, which hold `ACL_CAPACITY` per family.
#[derive(Debug, Default)]
pub struct Prefixes {
    v4: usize,
    v6: usize,
}

impl Prefixes {
    pub fn add<'a>(&mut self, nets: impl Iterator<Item = &'a IpNet>) {
        for net in nets {
            match net {
                IpNet::V4(_) => self.v4 += 1,
                IpNet::V6(_) => self.v6 += 1,
            }
        }
    }

    /// The family that no longer fits, if one does not.
    pub fn over(&self) -> Option<&'static str> {
        let cap = lb_common::edge::ACL_CAPACITY as usize;
        if self.v4 > cap {
            Some("IPv4")
        } else if self.v6 > cap {
            Some("IPv6")
        } else {
            None
        }
    }
}

/// A token bucket of new connections per source address or prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub exempt: Vec<IpNet>,
    pub action: Refusal,
}

/// Parses one prefix ("203.0.113.0/24", "2001:db8::/32", or a bare address for one host).
fn prefix(at: &Locator<'_>, value: &Spanned<String>, field: String) -> Result<IpNet, ConfigError> {
    let text = value.get_ref().trim();
    let parsed = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
    let net = parsed.map_err(|_| {
        at.error(
            Some(value.span()),
            field.clone(),
            format!("\"{text}\" is not an address prefix"),
            "write an IPv4 or IPv6 prefix such as \"203.0.113.0/24\" or \"2001:db8::/32\", or one address",
        )
    })?;
    if net.trunc() != net {
        return Err(at.error(
            Some(value.span()),
            field,
            format!(
                "\"{text}\" has bits set past its /{} prefix",
                net.prefix_len()
            ),
            format!(
                "write \"{}\" (or the host as a /{} prefix)",
                net.trunc(),
                net.max_prefix_len()
            ),
        ));
    }
    Ok(net)
}

fn prefixes(
    at: &Locator<'_>,
    list: &Option<Vec<Spanned<String>>>,
    field: &str,
) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::new();
    for (i, v) in list.iter().flatten().enumerate() {
        out.push(prefix(at, v, format!("{field}[{i}]"))?);
    }
    Ok(out)
}

/// Validates an `acl` table found at `field` (`dataplane.acl`, `service[0].acl`).
pub fn acl(at: &Locator<'_>, raw: &RawAcl, field: &str) -> Result<Acl, ConfigError> {
    Ok(Acl {
        allow: prefixes(at, &raw.allow, &format!("{field}.allow"))?,
        deny: prefixes(at, &raw.deny, &format!("{field}.deny"))?,
        action: raw.action,
    })
}

/// Validates a `rate_limit` table found at `field`.
pub fn rate_limit(
    at: &Locator<'_>,
    raw: &RawRateLimit,
    field: &str,
) -> Result<RateLimit, ConfigError> {
    let rate = &raw.connections_per_second;
    if !(1..=MAX_RATE).contains(rate.get_ref()) {
        return Err(at.error(
            Some(rate.span()),
            format!("{field}.connections_per_second"),
            format!("{} is out of range", rate.get_ref()),
            format!("use a rate from 1 to {MAX_RATE} new connections per second"),
        ));
    }
    let burst = match &raw.burst {
        None => *rate.get_ref(),
        Some(b) if *b.get_ref() >= 1 => *b.get_ref(),
        Some(b) => {
            return Err(at.error(
                Some(b.span()),
                format!("{field}.burst"),
                "0 would refuse every connection",
                "use at least 1 (the default is one second's worth: connections_per_second)",
            ));
        }
    };
    let length = |v: &Option<Spanned<u8>>, name: &str, max: u8| match v {
        None => Ok(max),
        Some(l) if (1..=max).contains(l.get_ref()) => Ok(*l.get_ref()),
        Some(l) => Err(at.error(
            Some(l.span()),
            format!("{field}.{name}"),
            format!(
                "/{} is not a prefix length for grouping sources",
                l.get_ref()
            ),
            format!("use 1 to {max} ({max}, the default, limits each address on its own)"),
        )),
    };
    Ok(RateLimit {
        per_second: *rate.get_ref(),
        burst,
        ipv4_prefix: length(&raw.ipv4_prefix, "ipv4_prefix", 32)?,
        ipv6_prefix: length(&raw.ipv6_prefix, "ipv6_prefix", 128)?,
        exempt: prefixes(at, &raw.exempt, &format!("{field}.exempt"))?,
        action: raw.action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_an_overlapping_allow() {
        let acl = Acl {
            allow: vec![net("10.1.0.0/16"), net("10.0.0.0/8"), net("2001:db8::/32")],
            deny: vec![net("10.0.0.0/12"), net("2001:db8:1::/48")],
            action: Refusal::Drop,
        };
        // 10.1/16 lies inside the denied 10.0/12: written, a longest-prefix lookup would let
        // 10.1.x.x through.
        assert_eq!(
            acl.entries(),
            vec![
                (net("10.0.0.0/12"), false),
                (net("2001:db8:1::/48"), false),
                (net("10.0.0.0/8"), true),
                (net("2001:db8::/32"), true),
            ]
        );
        // What a longest-prefix lookup of the written entries answers, as the kernel's does.
        let entries = acl.entries();
        let allows = |ip: std::net::IpAddr| {
            entries
                .iter()
                .filter(|(n, _)| n.contains(&ip))
                .max_by_key(|(n, _)| n.prefix_len())
                .map_or(acl.allow.is_empty(), |(_, allowed)| *allowed)
        };
        for (ip, allowed) in [
            ("10.1.2.3", false),
            ("10.16.0.1", true),
            ("11.0.0.1", false),
            ("2001:db8:1::5", false),
            ("2001:db8:2::5", true),
        ] {
            assert_eq!(allows(ip.parse().unwrap()), allowed, "{ip}");
        }
    }
}
