use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn addr(s: &str) -> [u8; 16] {
    key_addr(s.parse().expect("test address"))
}

/// The compiler's semantics: the rule set of the longest prefix containing `addr`, the last of
/// equal ones.
fn brute_force(prefixes: &[(IpNet, u32)], addr: &[u8; 16]) -> Option<u32> {
    let mut best: Option<(u8, u32)> = None;
    for (n, rs) in prefixes {
        let (len, masked) = search_key(n);
        if mask_prefix(addr, len.into()) == masked && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, *rs));
        }
    }
    best.map(|(_, rs)| rs)
}

#[test]
fn nested_excepts_and_both_families() {
    let prefixes = vec![
        (net("10.0.0.0/8"), 1),
        (net("10.1.0.0/16"), 0),
        (net("10.1.2.0/24"), 2),
        (net("10.1.2.128/25"), 0),
        (net("10.1.2.200/32"), 3),
        (net("2001:db8::/32"), 4),
        (net("2001:db8:1::/48"), 0),
        (net("::/0"), 5),
    ];
    let s = GroupSearch::new(&prefixes);
    assert_eq!(s.lengths, vec![0, 32, 48, 104, 112, 120, 121, 128]);
    for (a, want) in [
        ("10.2.3.4", Some(1)),
        ("10.1.9.9", Some(0)),
        ("10.1.2.5", Some(2)),
        ("10.1.2.129", Some(0)),
        ("10.1.2.200", Some(3)),
        ("2001:db8:2::1", Some(4)),
        ("2001:db8:1::1", Some(0)),
        ("2002::1", Some(5)),
        ("11.0.0.1", Some(5)),
    ] {
        assert_eq!(s.lookup(&addr(a)), want, "{a}");
    }
}

#[test]
fn empty_group_matches_nothing() {
    let s = GroupSearch::new(&[]);
    assert!(s.lengths.is_empty() && s.entries.is_empty());
    assert_eq!(s.lookup(&addr("10.0.0.1")), None);
}

#[test]
fn marker_without_enclosing_prefix_says_none() {
    // The search for 10.1.2.3/32 first probes /28, where only a marker leads on to it.
    let prefixes = vec![
        (net("192.168.0.0/16"), 1),
        (net("10.1.0.0/28"), 2),
        (net("10.1.2.3/32"), 3),
    ];
    let s = GroupSearch::new(&prefixes);
    assert_eq!(s.marker_only(), 1);
    let marker = s.entries.values().find(|e| !e.prefix).expect("a marker");
    assert_eq!(marker.rule_set, None);
    assert_eq!(s.lookup(&addr("10.1.2.3")), Some(3));
    assert_eq!(s.lookup(&addr("10.1.2.4")), None);
    assert_eq!(s.lookup(&addr("10.1.0.5")), Some(2));
}

#[test]
fn every_length_takes_at_most_eight_probes() {
    let prefixes: Vec<(IpNet, u32)> = (0..=128u8)
        .map(|l| {
            (
                IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), l).expect("len"),
                l as u32,
            )
        })
        .collect();
    let s = GroupSearch::new(&prefixes);
    assert_eq!(s.lengths.len(), portcullis_common::MAX_PREFIX_LENGTHS);
    for target in 0..s.lengths.len() {
        assert!(path_to(s.lengths.len(), target).count() < portcullis_common::PREFIX_SEARCH_PROBES);
    }
    assert_eq!(s.lookup(&[0; 16]), Some(128));
    let mut a = [0u8; 16];
    a[8] = 1; // bit 71 set: the longest prefix containing it is /71
    assert_eq!(s.lookup(&a), Some(71));
}

/// A prefix near `base` (so prefixes nest and overlap), IPv4 or IPv6.
fn arb_prefix() -> impl Strategy<Value = (IpNet, u32)> {
    let v4 = (0u32..=32, any::<u16>(), 0u32..4).prop_map(|(len, bits, rs)| {
        let a = Ipv4Addr::from(0x0a00_0000 | u32::from(bits) << 8 | (bits as u32 & 0xff));
        (
            IpNet::new(IpAddr::V4(a), len as u8).expect("len").trunc(),
            rs,
        )
    });
    let v6 = (0u32..=128, any::<u32>(), 0u32..4).prop_map(|(len, bits, rs)| {
        let a = Ipv6Addr::from(0x2001_0db8u128 << 96 | u128::from(bits) << 64 | u128::from(bits));
        (
            IpNet::new(IpAddr::V6(a), len as u8).expect("len").trunc(),
            rs,
        )
    });
    prop_oneof![v4, v6]
}

/// An address inside one of `prefixes` (random host bits) or anywhere.
fn probes(prefixes: &[(IpNet, u32)], seeds: &[(usize, u128)]) -> Vec<[u8; 16]> {
    seeds
        .iter()
        .map(|(i, bits)| match prefixes.get(i % (prefixes.len() + 1)) {
            Some((n, _)) => {
                let (len, base) = search_key(n);
                let host = if len == 0 {
                    *bits
                } else {
                    bits.checked_shr(len.into()).unwrap_or(0)
                };
                (u128::from_be_bytes(base) | host).to_be_bytes()
            }
            None => bits.to_be_bytes(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn search_equals_longest_match(
        prefixes in prop::collection::vec(arb_prefix(), 0..40),
        seeds in prop::collection::vec((any::<usize>(), any::<u128>()), 1..40),
    ) {
        let s = GroupSearch::new(&prefixes);
        for a in probes(&prefixes, &seeds) {
            prop_assert_eq!(s.lookup(&a), brute_force(&prefixes, &a));
        }
    }

    #[test]
    fn entries_are_prefixes_and_markers_only(prefixes in prop::collection::vec(arb_prefix(), 0..40)) {
        let s = GroupSearch::new(&prefixes);
        let real: HashSet<SearchKey> = prefixes.iter().map(|(n, _)| search_key(n)).collect();
        prop_assert_eq!(s.entries.values().filter(|e| e.prefix).count(), real.len());
        for (key, e) in &s.entries {
            prop_assert!(e.prefix || e.marker);
            prop_assert_eq!(e.prefix, real.contains(key));
            prop_assert!(s.lengths.contains(&key.0));
        }
    }

    /// The count the loader checks before a write is the number of entries it then writes,
    /// within the bound it uses to skip the count.
    #[test]
    fn entry_count_is_what_is_written(prefixes in prop::collection::vec(arb_prefix(), 0..40)) {
        let count = entry_count(&prefixes);
        prop_assert_eq!(count, GroupSearch::new(&prefixes).entries.len());
        prop_assert!(count <= MAX_ENTRIES_PER_PREFIX * prefixes.len());
    }
}
