//! IP addresses and CIDRs as the Kubernetes v1.33 API server parses them in `ipBlock` and
//! `status.podIPs`.
//!
//! v1.33 validates these legacy fields with `netutils.ParseIPSloppy` / `ParseCIDRSloppy`: the
//! `StrictIPCIDRValidation` gate that refuses non-canonical forms is alpha and off there. So, as
//! the API server does:
//! - host bits may be set (`192.168.1.77/24` is `192.168.1.0/24`);
//! - leading zeros in the dotted-quad octets are decimal and dropped (`010.0.0.0/8` is
//!   `10.0.0.0/8`), and the prefix length may have leading zeros (`10.0.0.0/08`);
//! - an IPv4-mapped IPv6 address (`::ffff:10.0.0.0/104`) is valid; Go's `net.IPNet` matches it
//!   against IPv4 addresses (`10.0.0.0/8` here), and so does this crate, while the `except`
//!   subset check compares the prefix lengths as written, as upstream does;
//! - nothing is trimmed: `" 10.0.0.0/8"` is invalid.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// A CIDR as the API server parsed it: the network Go's `IPNet.Contains` matches against, and
/// the prefix length of the text (`Mask.Size()`), which the `except` check compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ApiCidr {
    pub(super) net: IpNet,
    pub(super) written_prefix: u8,
}

impl ApiCidr {
    /// `ValidateIPBlock`'s rule: `except` must be inside `cidr` (`cidr.Contains(except.IP)`,
    /// same family once IPv4-mapped addresses count as IPv4) with a strictly longer prefix.
    pub(super) fn strictly_contains(&self, except: &ApiCidr) -> bool {
        self.net.contains(&except.net.network()) && self.written_prefix < except.written_prefix
    }
}

/// `netutils.ParseCIDRSloppy`, with the network normalised as Go's `IPNet.Contains` sees it.
pub(super) fn parse_cidr_sloppy(text: &str) -> Option<ApiCidr> {
    parse_cidr(text).or_else(|| parse_cidr(&strip_zeros(text)?))
}

/// `netutils.ParseIPSloppy`; an IPv4-mapped IPv6 address is IPv4 (Go's `To4()`), as
/// `IsDualStackIPStrings` counts it.
pub(super) fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    let ip = parse_ip(text).or_else(|| parse_ip(&strip_zeros(text)?))?;
    Some(unmap(ip))
}

/// Go's `net.ParseIP`: `netip.ParseAddr` (what `std` parses: no leading zeros, at most four hex
/// digits a group) without a zone.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

/// Go's `net.ParseCIDR`: the address as `net.ParseIP` takes it, `/`, a decimal prefix length
/// (leading zeros allowed) no longer than the address.
fn parse_cidr(text: &str) -> Option<ApiCidr> {
    let (addr, prefix) = text.split_once('/')?;
    let ip = parse_ip(addr)?;
    let prefix = go_dtoi(prefix)?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let written_prefix = u8::try_from(prefix).ok().filter(|p| *p <= bits)?;
    let net = IpNet::new(ip, written_prefix).ok()?.trunc();
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok()?,
            None => net,
        },
        _ => net,
    };
    Some(ApiCidr {
        net,
        written_prefix,
    })
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => Ipv6Addr::to_ipv4_mapped(&v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Go's `dtoi`: one or more ASCII digits, the whole text, below 0xFFFFFF.
fn go_dtoi(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u32 = 0;
    for b in text.bytes() {
        n = n * 10 + u32::from(b - b'0');
        if n >= 0xFF_FFFF {
            return None;
        }
    }
    Some(n)
}

/// The rewrite `ParseIPSloppy` / `ParseCIDRSloppy` retry with: a dotted quad at the start or
/// after the last `:`, optionally `/prefix`, ending the text, loses the leading zeros of every
/// number (regex `(^|:)0*(0|[1-9][0-9]*)\.…((/)0*(0|[1-9][0-9]*))?$`). `None` when it does not
/// match (the retry would fail as the first attempt did).
fn strip_zeros(text: &str) -> Option<String> {
    let start = text.rfind(':').map_or(0, |i| i + 1);
    let (head, tail) = text.split_at(start);
    let (quad, prefix) = match tail.split_once('/') {
        Some((quad, prefix)) => (quad, Some(prefix)),
        None => (tail, None),
    };
    let octets: Vec<&str> = quad.split('.').collect();
    let numbers = octets.iter().copied().chain(prefix);
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if octets.len() != 4 || !numbers.clone().all(is_number) {
        return None;
    }
    let strip = |s: &str| match s.trim_start_matches('0') {
        "" => "0".to_string(),
        rest => rest.to_string(),
    };
    let quad: Vec<String> = octets.iter().map(|o| strip(o)).collect();
    let mut out = format!("{head}{}", quad.join("."));
    if let Some(prefix) = prefix {
        out.push('/');
        out.push_str(&strip(prefix));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Option<(String, u8)> {
        parse_cidr_sloppy(text).map(|c| (c.net.to_string(), c.written_prefix))
    }

    #[test]
    fn cidrs_parse_as_v1_33_does() {
        let ok = [
            ("192.168.0.0/16", "192.168.0.0/16", 16),
            ("192.168.1.77/24", "192.168.1.0/24", 24),
            ("010.000.0.1/8", "10.0.0.0/8", 8),
            ("10.0.0.0/008", "10.0.0.0/8", 8),
            ("fd00:192:168::/48", "fd00:192:168::/48", 48),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8", 104),
            ("::ffff:010.1.2.3/120", "10.1.2.0/24", 120),
            ("::ffff:0:0/96", "0.0.0.0/0", 96),
            ("::ffff:0:0/80", "::/80", 80),
            ("0.0.0.0/0", "0.0.0.0/0", 0),
            ("::/0", "::/0", 0),
        ];
        for (text, net, prefix) in ok {
            assert_eq!(cidr(text), Some((net.to_string(), prefix)), "{text}");
        }
        let bad = [
            "",
            " ",
            "192.168.5.6",
            "fd00:192:168::",
            "300.300.300.300/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "fe80::1%eth0/64",
            "fd00::00001/64",
            "fd00::/129",
            "0x0a.0.0.0/8",
            "10.0.0.0/99999999",
        ];
        for text in bad {
            assert_eq!(cidr(text), None, "{text:?}");
        }
    }

    #[test]
    fn except_is_checked_on_written_prefixes() {
        let c = |t: &str| parse_cidr_sloppy(t).unwrap();
        assert!(c("10.0.0.0/8").strictly_contains(&c("::ffff:10.1.0.0/112")));
        assert!(!c("::ffff:10.0.0.0/104").strictly_contains(&c("10.1.0.0/16")));
        assert!(!c("10.0.0.0/8").strictly_contains(&c("10.0.0.0/8")));
        assert!(!c("::/0").strictly_contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").strictly_contains(&c("::a00:0/104")));
    }

    #[test]
    fn ips_parse_as_v1_33_does() {
        let ip = |t: &str| parse_ip_sloppy(t).map(|ip| ip.to_string());
        assert_eq!(ip("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(ip("010.0.0.01").as_deref(), Some("10.0.0.1"));
        assert_eq!(ip("::ffff:10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(ip("fd00::1").as_deref(), Some("fd00::1"));
        for bad in ["", " 10.0.0.1", "10.0.0.1/32", "fe80::1%eth0", "10.0.0.256"] {
            assert_eq!(ip(bad), None, "{bad:?}");
        }
    }
}
