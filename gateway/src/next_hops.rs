//! Keeps the established fast path's next hops honest: a thread listens to the kernel's routing
//! netlink groups (links, addresses, IPv4/IPv6 routes and rules, neighbours) of the gateway's
//! network namespace and bumps `NEXT_HOP_EPOCH` after every burst of messages, so the next packet
//! of each flow direction looks its route up again. Events are not parsed: any change may move a
//! next hop, and a FIB lookup per flow direction after a change is cheap. A lost event (the
//! socket's buffer overflowed) is treated as a change too.
//!
//! With the AF_XDP engine the same burst also bumps the engine's epoch (its next-hop cache) and
//! rewrites `HOST_ADDRS` with the namespace's addresses (packets for them are never steered).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use aya::maps::{Array, HashMap, MapData};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use portcullis_bpf::host_addrs::{local_addresses, set_host_addrs};
use portcullis_bpf::{map_err, Error, Result};
use portcullis_common::MAP_NEXT_HOP_EPOCH;
use tracing::{debug, warn};

/// `RTMGRP_*` bits of the legacy group mask (linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV4_RULE: u32 = 0x80;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// `RTNLGRP_IPV6_RULE`: beyond the legacy mask, joined by number.
const RTNLGRP_IPV6_RULE: u32 = 19;

/// How often the thread checks whether it should stop.
const STOP_POLL_MS: i32 = 200;

/// The running watcher; dropping it stops and joins the thread.
pub(crate) struct EpochWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// `HOST_ADDRS`.
pub(crate) type HostAddrs = HashMap<MapData, [u8; 16], u8>;

/// What a burst of changes updates.
pub(crate) struct Followers {
    pub epoch: Array<MapData, u32>,
    /// The AF_XDP engine's: its epoch and `HOST_ADDRS`.
    pub engine: Option<(Arc<AtomicU32>, HostAddrs)>,
}

impl Followers {
    fn follow(&mut self) -> Result<()> {
        bump(&mut self.epoch)?;
        if let Some((epoch, host_addrs)) = &mut self.engine {
            set_host_addrs(host_addrs, &local_addresses()?)?;
            epoch.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }
}

/// Subscribes in the calling thread's network namespace (the gateway's), updates the followers
/// once (flows adopted from a previous daemon may carry hops cached before it started) and starts
/// the thread.
pub(crate) fn watch(mut followers: Followers) -> Result<EpochWatch> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Netlink)?;
    let groups = RTMGRP_LINK
        | RTMGRP_NEIGH
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV4_RULE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    socket
        .bind(&SocketAddr::new(0, groups))
        .map_err(Error::Netlink)?;
    socket
        .add_membership(RTNLGRP_IPV6_RULE)
        .map_err(Error::Netlink)?;
    socket.set_non_blocking(true).map_err(Error::Netlink)?;
    followers.follow()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("next-hop-epoch".into())
        .spawn(move || listen(&socket, &mut followers, &stopping))
        .map_err(Error::Netlink)?;
    Ok(EpochWatch {
        stop,
        thread: Some(thread),
    })
}

impl Drop for EpochWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(socket: &Socket, followers: &mut Followers, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut fd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fd, 1, STOP_POLL_MS) } <= 0 {
            continue;
        }
        // Drain the burst (a route change brings several messages), then bump once.
        let mut messages = 0;
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(_) => messages += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ENOBUFS: events were lost; the bump below covers them.
                Err(e) => {
                    debug!(error = %e, "netlink route socket");
                    messages += 1;
                    break;
                }
            }
        }
        if messages > 0 {
            if let Err(e) = followers.follow() {
                warn!(error = %e, "could not follow a route, neighbour or address change");
            }
        }
    }
}

/// The next epoch, never 0 (a flow that never cached a hop has epoch 0).
fn bump(epoch: &mut Array<MapData, u32>) -> Result<()> {
    let current = epoch.get(&0, 0).map_err(map_err(MAP_NEXT_HOP_EPOCH))?;
    let next = current.wrapping_add(1).max(1);
    epoch.set(0, next, 0).map_err(map_err(MAP_NEXT_HOP_EPOCH))
}

/// The epoch in force (for tests and status).
pub(crate) fn current(epoch: &Array<MapData, u32>) -> Result<u32> {
    epoch.get(&0, 0).map_err(map_err(MAP_NEXT_HOP_EPOCH))
}
