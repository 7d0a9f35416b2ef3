//! The longest-prefix match of a peer within a group: a binary search on the group's prefix
//! lengths with one hash probe per step (Waldvogel et al., "Scalable high speed IP routing
//! lookups"), so the cost is at most `PREFIX_SEARCH_PROBES` probes whatever the number of
//! prefixes. The loader places a marker on every length the search visits on its way to a longer
//! prefix, each carrying the rule set of the longest prefix containing it: a hit means "the
//! answer is this entry's rule set or something longer", a miss "something shorter".

use portcullis_common::*;

use crate::maps::Maps;
use crate::words::set_prefix_key;

/// The rule-set id of the longest prefix of `group` containing `peer` (a `Query` address); 0
/// when none does.
#[inline(always)]
pub fn longest_prefix<M: Maps>(group: u32, peer: &[u8; 16]) -> u32 {
    let lengths = match M::prefix_lengths().get_ptr(&group) {
        // SAFETY: value pointer from a successful lookup; read only.
        Some(l) => unsafe { &*l },
        None => return 0,
    };
    let mut key = core::mem::MaybeUninit::<PrefixKey>::uninit();
    let mut best = 0;
    // Half-open range of `lengths` still to search; the loader's markers follow the same steps.
    let mut lo = 0u32;
    let mut hi = lengths.count;
    for _ in 0..PREFIX_SEARCH_PROBES {
        if lo >= hi {
            break;
        }
        let mid = (lo + hi) / 2;
        let len = match lengths.lengths.get(mid as usize) {
            Some(len) => *len,
            None => break,
        };
        // SAFETY: `peer` is a Query address (8-byte aligned, see `words`); every byte of the key
        // is written before the lookup reads it.
        let key = unsafe {
            set_prefix_key(key.as_mut_ptr(), group, peer, len as u32);
            key.assume_init_ref()
        };
        match M::prefixes().get_ptr(key) {
            Some(v) => {
                // SAFETY: value pointer from a successful lookup.
                best = unsafe { (*v).rule_set };
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    best
}
