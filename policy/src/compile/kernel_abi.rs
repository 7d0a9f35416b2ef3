//! What the compiled tables share with the kernel datapath's ABI: how many port ranges a rule set
//! holds, and the one 128-bit address space with IPv4 in its IPv4-mapped range. Everything here
//! must agree with the kernel side; nothing else in `compile` repeats it.

use std::net::IpAddr;

use ipnet::IpNet;

use super::groups::policy_names;
use super::rules::PortRule;
use super::CompileError;
use crate::model::{Direction, Policy};

/// Most port ranges one prefix's rule set may hold.
pub use portcullis_common::MAX_PORT_RANGES;
use portcullis_common::{ipv4_mapped, IPV4_MAPPED_PREFIX_BITS};

/// An address prefix in the shared 128-bit space: `(network, length)`, length 0..=128.
pub(super) type Prefix128 = (u128, u8);

pub(super) fn to128(net: &IpNet) -> Prefix128 {
    match net {
        IpNet::V4(n) => (
            u128::from_be_bytes(ipv4_mapped(n.network().octets())),
            IPV4_MAPPED_PREFIX_BITS + n.prefix_len(),
        ),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
    }
}

pub(super) fn addr128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from_be_bytes(ipv4_mapped(v4.octets())),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(super) fn from128((addr, len): Prefix128, v4: bool) -> IpNet {
    if v4 {
        IpNet::V4(
            ipnet::Ipv4Net::new(
                std::net::Ipv4Addr::from(addr as u32),
                len - IPV4_MAPPED_PREFIX_BITS,
            )
            .expect("IPv4 prefix length within 0..=32"),
        )
    } else {
        IpNet::V6(
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), len)
                .expect("IPv6 prefix length within 0..=128"),
        )
    }
}

pub(super) fn contains128((net, len): Prefix128, addr: u128) -> bool {
    len == 0 || (net ^ addr) >> (128 - u32::from(len)) == 0
}

/// A rule set the kernel cannot hold (more than [`MAX_PORT_RANGES`] ranges) fails the compile,
/// naming the policies that asked for it.
pub(super) fn check_port_ranges(
    set: &[PortRule],
    policies: &[&Policy],
    direction: Direction,
) -> Result<(), CompileError> {
    if set.len() > MAX_PORT_RANGES {
        return Err(CompileError::TooManyPortRanges {
            policies: policy_names(policies).join(", "),
            direction,
            count: set.len(),
            max: MAX_PORT_RANGES,
        });
    }
    Ok(())
}

/// An IPv6 prefix covering the IPv4-mapped range must not answer for IPv4 addresses: shadow
/// it with the IPv4 root (deny unless 0.0.0.0/0 is listed).
pub(super) fn shadow_v4_mapped(prefixes: &mut Vec<(IpNet, u32)>) {
    let mapped_root: IpNet = "::ffff:0:0/96".parse().expect("literal CIDR");
    let v4_root = "0.0.0.0/0".parse::<IpNet>().expect("literal CIDR");
    if prefixes.iter().any(|(p, _)| p.contains(&mapped_root))
        && !prefixes.iter().any(|(p, _)| *p == v4_root)
    {
        prefixes.push((v4_root, 0));
    }
}
