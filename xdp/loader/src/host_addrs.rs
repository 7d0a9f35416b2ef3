//! `HOST_ADDRS`, the addresses a program treats as its host's own (node hook: traffic from the
//! node itself; gateway: traffic the kernel delivers locally, never steered to the AF_XDP engine).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, MapData};
use portcullis_common::{MAP_HOST_ADDRS, MAX_HOST_ADDRS};

use crate::{ignore_missing, key_addr, map_err, Error, Result};

/// Makes `addrs` the content of `HOST_ADDRS`; returns whether it changed.
pub fn set_host_addrs(map: &mut HashMap<MapData, [u8; 16], u8>, addrs: &[IpAddr]) -> Result<bool> {
    let wanted: BTreeSet<[u8; 16]> = addrs.iter().map(|ip| key_addr(*ip)).collect();
    if wanted.len() > MAX_HOST_ADDRS as usize {
        return Err(Error::TooManyHostAddrs {
            count: wanted.len(),
            max: MAX_HOST_ADDRS,
        });
    }
    let present: BTreeSet<[u8; 16]> = map.keys().filter_map(|k| k.ok()).collect();
    for gone in present.difference(&wanted) {
        ignore_missing(map.remove(gone), MAP_HOST_ADDRS)?;
    }
    for new in wanted.difference(&present) {
        map.insert(new, 1, 0).map_err(map_err(MAP_HOST_ADDRS))?;
    }
    Ok(present != wanted)
}

/// Every address of the calling thread's network namespace's interfaces (loopback and
/// link-local included: packets to them are delivered locally too), from `getifaddrs(3)`.
pub fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(Error::Netlink(std::io::Error::last_os_error()));
    }
    let mut addrs = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its address, when set, is a sockaddr
        // of the family it names.
        unsafe {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let v4 = &*(sa as *const libc::sockaddr_in);
                        addrs.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(sa as *const libc::sockaddr_in6);
                        addrs.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}
