//! Source NAT configuration of the gateway (EgressGateway): [`SnatConfig`], validated as a whole
//! and written into the program's SNAT tables (`SNAT_CLASSES`, `SNAT_ENTRIES`,
//! `SNAT_EGRESS_IPS`), and what the translations look like ([`SnatStatus`]). The kernel side is
//! `xdp/ebpf/src/snat.rs`; the translation table and its GC are [`crate::snat_maps`].
//!
//! An update replaces the tables without a generation switch: new and changed entries are written
//! first (egress addresses, then destination entries, then pod classes), stale ones removed after,
//! so a packet sees either the old or the new answer for each key. Translations already made keep
//! their mapping whatever the update says; an egress address dropped from the configuration stays
//! answered for (ARP/ND, replies) while translations use it, and a pod dropped from it stays known
//! (with a class no entry has: its new connections leave untranslated) so that its translated ones
//! stay in XDP, until the GC removes the last translation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use portcullis_bpf::{Error, Result};
use portcullis_common::*;
use serde::Serialize;

/// Source ports translations use unless told otherwise (Linux's default ephemeral range).
pub const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 32768..=60999;

/// What the gateway translates: pods (by address) in classes, per class the destinations that
/// leave with an egress address (or are exempt), the egress addresses and their port pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatConfig {
    /// Pod address → class. A pod without a class is never translated.
    pub classes: Vec<(IpAddr, u32)>,
    /// (class, destination, `Some(egress address)`: translate | `None`: exempt). For a packet
    /// from a pod of the class, the longest destination of the packet's family containing its
    /// destination decides; no entry: untranslated.
    pub entries: Vec<(u32, IpNet, Option<IpAddr>)>,
    /// The egress addresses the gateway answers ARP/ND for on its external leg (those whose
    /// traffic it carries). An egress address the entries name but this list lacks still
    /// translates (it has a pool), unanswered: another gateway answers for it.
    pub egress_ips: Vec<IpAddr>,
    /// Source ports (ICMP echo identifiers) translations use, per egress address.
    pub ports: RangeInclusive<u16>,
}

impl Default for SnatConfig {
    fn default() -> SnatConfig {
        SnatConfig {
            classes: Vec::new(),
            entries: Vec::new(),
            egress_ips: Vec::new(),
            ports: DEFAULT_SNAT_PORTS,
        }
    }
}

/// The SNAT tables a valid [`SnatConfig`] becomes, keyed as in the maps.
#[derive(Debug, Default)]
pub(crate) struct SnatTables {
    pub classes: BTreeMap<[u8; 16], SnatClass>,
    pub entries: BTreeMap<(u32, [u8; 24]), SnatTarget>,
    pub egress_ips: BTreeMap<[u8; 16], EgressIp>,
}

/// The 16-byte key form of an address (IPv4 mapped).
pub(crate) fn key_of(ip: IpAddr) -> [u8; 16] {
    portcullis_bpf::key_addr(ip)
}

/// The address of a 16-byte key (an IPv4-mapped one as IPv4).
pub(crate) fn addr_of(key: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The `SNAT_ENTRIES` key of `(class, destination)`: its prefix length and data.
pub(crate) fn entry_key(class: u32, dst: IpNet) -> Key<SnatEntryKey> {
    let (family, len) = match dst {
        IpNet::V4(n) => (4u32, 96 + n.prefix_len() as u32),
        IpNet::V6(n) => (6u32, n.prefix_len() as u32),
    };
    Key::new(
        SNAT_KEY_BITS_BEFORE_ADDR + len,
        SnatEntryKey {
            class: class.to_be_bytes(),
            family: family.to_be_bytes(),
            addr: key_of(dst.trunc().addr()),
        },
    )
}

/// The key of a trie entry as a plain sortable value (prefix length, data bytes).
pub(crate) fn entry_id(key: &Key<SnatEntryKey>) -> (u32, [u8; 24]) {
    let data = key.data();
    let mut bytes = [0u8; 24];
    bytes[..4].copy_from_slice(&data.class);
    bytes[4..8].copy_from_slice(&data.family);
    bytes[8..].copy_from_slice(&data.addr);
    (key.prefix_len(), bytes)
}

/// The trie key of an [`entry_id`].
pub(crate) fn entry_from_id((len, bytes): (u32, [u8; 24])) -> Key<SnatEntryKey> {
    let mut data = SnatEntryKey {
        class: [0; 4],
        family: [0; 4],
        addr: [0; 16],
    };
    data.class.copy_from_slice(&bytes[..4]);
    data.family.copy_from_slice(&bytes[4..8]);
    data.addr.copy_from_slice(&bytes[8..]);
    Key::new(len, data)
}

fn refuse(message: String) -> Error {
    Error::InvalidSnat(message)
}

impl SnatConfig {
    /// The tables of this configuration, with `mac` (the external leg's) for every egress
    /// address; a configuration that cannot be enforced is refused with what is wrong.
    pub(crate) fn tables(&self, mac: [u8; 6]) -> Result<SnatTables> {
        if self.ports.is_empty() {
            return Err(refuse(format!(
                "the port range {}-{} is empty",
                self.ports.start(),
                self.ports.end()
            )));
        }
        let mut t = SnatTables::default();
        // Every egress address the entries name gets a pool; those of `egress_ips` are answered.
        let named = (self.entries.iter()).filter_map(|(_, _, ip)| ip.map(|ip| (ip, 0)));
        for (ip, answer) in named.chain(self.egress_ips.iter().map(|ip| (*ip, 1))) {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(refuse(format!("{ip} cannot be an egress address")));
            }
            let pool = EgressIp {
                mac,
                port_first: *self.ports.start(),
                port_last: *self.ports.end(),
                configured: 1,
                answer,
            };
            t.egress_ips.insert(key_of(ip), pool);
        }
        for (pod, class) in &self.classes {
            if *class == SNAT_CLASS_RETIRED {
                return Err(refuse(format!(
                    "pod address {pod}: class {class} is reserved"
                )));
            }
            match t.classes.insert(key_of(*pod), *class) {
                Some(other) if other != *class => {
                    return Err(refuse(format!(
                        "pod address {pod} is in two classes, {other} and {class}"
                    )))
                }
                _ => {}
            }
        }
        let known: BTreeSet<u32> = t.classes.values().copied().collect();
        for (class, dst, egress) in &self.entries {
            if !known.contains(class) {
                return Err(refuse(format!(
                    "entry for {dst} names class {class}, which no pod has"
                )));
            }
            let mut target = SnatTarget::default();
            if let Some(ip) = egress {
                if ip.is_ipv4() != matches!(dst, IpNet::V4(_)) {
                    return Err(refuse(format!(
                        "class {class}: egress address {ip} is not of the family of {dst}"
                    )));
                }
                target.egress = key_of(*ip);
                target.flags = SNAT_TARGET_TRANSLATE;
            }
            let id = entry_id(&entry_key(*class, *dst));
            match t.entries.insert(id, target) {
                Some(other) if other != target => {
                    return Err(refuse(format!(
                        "class {class}: {dst} is given two different answers"
                    )))
                }
                _ => {}
            }
        }
        for (what, n, max) in [
            ("pod addresses", t.classes.len(), MAX_SNAT_CLASSES),
            ("entries", t.entries.len(), MAX_SNAT_ENTRIES),
            ("egress addresses", t.egress_ips.len(), MAX_SNAT_EGRESS_IPS),
        ] {
            if n > max as usize {
                return Err(refuse(format!(
                    "{n} {what}, more than the {max} the gateway holds"
                )));
            }
        }
        Ok(t)
    }
}

/// `SNAT_COUNTERS`, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnatCounters {
    /// Connections translated (each has an outbound and an inbound entry).
    pub new_translations: u64,
    /// Packets of pods translated to an egress address.
    pub translated_outbound: u64,
    /// Packets to an egress address translated back to their pod.
    pub translated_inbound: u64,
    /// ICMP errors about a translated connection translated back.
    pub icmp_errors: u64,
    /// Dropped: no free port of the pool.
    pub pool_exhausted: u64,
    /// Dropped: to an egress address, no translation knows it.
    pub no_mapping: u64,
    /// Dropped: the translation table is full.
    pub table_full: u64,
    pub arp_replies: u64,
    pub nd_replies: u64,
}

impl SnatCounters {
    pub(crate) fn from_sums(s: &[u64; SNAT_COUNTER_COUNT as usize]) -> SnatCounters {
        let c = |i: u32| s[i as usize];
        SnatCounters {
            new_translations: c(SNAT_COUNTER_NEW),
            translated_outbound: c(SNAT_COUNTER_OUTBOUND),
            translated_inbound: c(SNAT_COUNTER_INBOUND),
            icmp_errors: c(SNAT_COUNTER_ICMP_ERROR),
            pool_exhausted: c(SNAT_COUNTER_EXHAUSTED),
            no_mapping: c(SNAT_COUNTER_NO_MAPPING),
            table_full: c(SNAT_COUNTER_TABLE_FULL),
            arp_replies: c(SNAT_COUNTER_ARP_REPLY),
            nd_replies: c(SNAT_COUNTER_ND_REPLY),
        }
    }
}

/// One egress address and the use of its pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressIpStatus {
    pub ip: IpAddr,
    /// Connections translated to it.
    pub translations: usize,
    /// Distinct ports they use (a port serves several connections to different remote ends).
    pub ports_in_use: usize,
    pub pool_size: usize,
}

/// What SNAT is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnatStatus {
    /// `CONFIG_FLAG_SNAT` is set: the program looks at the SNAT tables.
    pub enabled: bool,
    /// Pod addresses with a class.
    pub pods: usize,
    /// Pods no configuration selects any more whose translations remain (kept translating them
    /// until the GC removes the last one).
    pub retired_pods: usize,
    /// `SNAT_ENTRIES` entries.
    pub entries: usize,
    /// Translated connections (outbound entries).
    pub translations: usize,
    pub egress_ips: Vec<EgressIpStatus>,
    pub counters: SnatCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn valid() -> SnatConfig {
        SnatConfig {
            classes: vec![(ip("10.0.0.1"), 1), (ip("fd00::1"), 1), (ip("10.0.0.2"), 2)],
            entries: vec![
                (1, "0.0.0.0/0".parse().unwrap(), Some(ip("192.0.2.1"))),
                (1, "10.96.0.0/12".parse().unwrap(), None),
                (1, "::/0".parse().unwrap(), Some(ip("2001:db8::1"))),
                (2, "198.51.100.0/24".parse().unwrap(), Some(ip("192.0.2.1"))),
            ],
            egress_ips: vec![ip("192.0.2.1"), ip("2001:db8::1")],
            ports: 1000..=1999,
        }
    }

    #[test]
    fn a_valid_configuration_becomes_its_tables() {
        let t = valid().tables([2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(
            (t.classes.len(), t.entries.len(), t.egress_ips.len()),
            (3, 4, 2)
        );
        let pool = t.egress_ips[&key_of(ip("192.0.2.1"))];
        assert_eq!(
            (pool.port_first, pool.port_last, pool.configured),
            (1000, 1999, 1)
        );
        assert_eq!((pool.mac, pool.answer), ([2, 0, 0, 0, 0, 9], 1));
        // Named by an entry only: a pool, no ARP/ND answers.
        let mut unlisted = valid();
        unlisted.egress_ips.truncate(1);
        let t = unlisted.tables([0; 6]).unwrap();
        assert_eq!(t.egress_ips[&key_of(ip("2001:db8::1"))].answer, 0);
        // The prefix lengths count class and family first; IPv4 lives in the mapped space.
        let v4 = entry_key(2, "198.51.100.0/24".parse().unwrap());
        assert_eq!(v4.prefix_len(), 64 + 96 + 24);
        assert_eq!(entry_key(1, "::/0".parse().unwrap()).prefix_len(), 64);
        let exempt = t.entries[&entry_id(&entry_key(1, "10.96.0.0/12".parse().unwrap()))];
        assert_eq!(exempt, SnatTarget::default());
        assert_eq!(entry_from_id(entry_id(&v4)).data(), v4.data());
        // Host bits of a destination are not part of its key.
        let host_bits = entry_key(2, "198.51.100.7/24".parse().unwrap());
        assert_eq!(entry_id(&host_bits), entry_id(&v4));
    }

    #[test]
    fn invalid_configurations_are_refused_with_the_reason() {
        type Breaks = Box<dyn Fn(&mut SnatConfig)>;
        #[allow(clippy::reversed_empty_ranges)]
        let empty: Breaks = Box::new(|c| c.ports = 2000..=1999);
        let cases: Vec<(&str, Breaks)> = vec![
            ("empty", empty),
            (
                "not of the family",
                Box::new(|c| c.entries[0].2 = Some(ip("2001:db8::1"))),
            ),
            ("which no pod has", Box::new(|c| c.entries[1].0 = 9)),
            (
                "two classes",
                Box::new(|c| c.classes.push((ip("10.0.0.1"), 2))),
            ),
            (
                "two different answers",
                Box::new(|c| c.entries.push((1, "0.0.0.0/0".parse().unwrap(), None))),
            ),
            (
                "cannot be an egress",
                Box::new(|c| c.egress_ips.push(ip("0.0.0.0"))),
            ),
        ];
        for (reason, break_it) in cases {
            let mut cfg = valid();
            break_it(&mut cfg);
            match cfg.tables([0; 6]) {
                Err(Error::InvalidSnat(m)) => assert!(m.contains(reason), "{reason}: {m}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn addresses_round_trip_through_keys() {
        for a in ["192.0.2.1", "2001:db8::1", "::ffff:0:1"] {
            assert_eq!(addr_of(key_of(ip(a))), ip(a).to_canonical(), "{a}");
        }
    }
}
