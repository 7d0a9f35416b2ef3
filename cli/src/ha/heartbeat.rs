//! The heartbeat thread: every interval it runs the election (gateway) or follows it (node),
//! then sends its heartbeat to every member of every group; in between it receives heartbeats.
//! A gateway answers a node's heartbeat at once, so a node hears every gateway once an interval
//! even though the gateways do not know the nodes.

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use portcullis_ha::protocol::{decode_heartbeat, encode_heartbeat, Heartbeat, Role, MAX_DATAGRAM};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

use super::{member_addr, Shared};

pub(super) fn spawn(shared: Arc<Shared>) -> Result<std::thread::JoinHandle<()>> {
    // Gateways listen on the heartbeat port; nodes on any port (the gateways answer them).
    let port = match shared.me {
        Some(_) => shared.args.ha_heartbeat_port,
        None => 0,
    };
    let socket =
        bind(port).with_context(|| format!("binding the heartbeat socket (UDP {port})"))?;
    std::thread::Builder::new()
        .name("ha-heartbeat".into())
        .spawn(move || run(&shared, &socket))
        .context("starting the heartbeat thread")
}

/// A dual-stack UDP socket on `port`.
fn bind(port: u16) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(socket.into())
}

fn run(shared: &Shared, socket: &UdpSocket) {
    let interval = Duration::from_millis(shared.timing.interval_ms);
    let mut seq = 0u64;
    let mut next_send = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = shared.now_ms();
        if now >= next_send {
            seq += 1;
            round(shared, socket, seq, now);
            next_send = now + shared.timing.interval_ms;
        }
        let wait = next_send.saturating_sub(shared.now_ms()).max(1);
        let _ = socket.set_read_timeout(Some(Duration::from_millis(wait).min(interval)));
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let now = shared.now_ms();
        match decode_heartbeat(&buf[..len]) {
            Ok(hb) => {
                let reply = {
                    let mut st = shared.lock();
                    st.counters.heartbeats_received += 1;
                    st.membership.heard(&hb, now);
                    // A gateway answers nodes at once.
                    (shared.me.is_some() && hb.role == Role::Node)
                        .then(|| st.membership.heartbeat(seq, now))
                };
                if let Some(reply) = reply {
                    if let Ok(bytes) = encode_heartbeat(&reply) {
                        let _ = socket.send_to(&bytes, from);
                    }
                }
            }
            Err(e) => {
                // Counted by reason (status, metrics); a flood of garbage must not flood the log.
                shared.lock().refused(e.reason());
                debug!(%from, error = %e, "heartbeat refused");
            }
        }
    }
}

/// One interval's work: the election (gateway) or the actives (node), then the heartbeats.
fn round(shared: &Shared, socket: &UdpSocket, seq: u64, now: u64) {
    let (hb, targets, changed) = {
        let mut st = shared.lock();
        let changed = match &shared.me {
            Some(_) => {
                let st = &mut *st;
                let ready = st.sync.ready(&st.membership, now);
                st.membership.set_local(ready);
                let decision = st.membership.tick(now);
                st.counters.split_brains_resolved += decision.split_brains_resolved;
                for name in &decision.gained {
                    info!(egress_gateway = %name, "active for the EgressGateway (claimed)");
                }
                for name in &decision.lost {
                    info!(egress_gateway = %name, "no longer active for the EgressGateway (released)");
                }
                let changed = decision.claims != st.claims;
                if changed {
                    st.counters.failovers += decision.gained.len() as u64;
                }
                st.claims = decision.claims;
                changed
            }
            None => {
                let actives = (st.groups.iter())
                    .filter_map(|g| {
                        let active = st.membership.active(&g.egress_gateway, now)?;
                        Some((g.egress_gateway.clone(), active))
                    })
                    .collect();
                let changed = actives != st.actives;
                if changed {
                    if !st.actives.is_empty() {
                        st.counters.failovers += 1;
                    }
                    info!(?actives, "egress gateways in use");
                    st.actives = actives;
                }
                changed
            }
        };
        let hb: Heartbeat = st.membership.heartbeat(seq, now);
        let members: BTreeSet<&String> = st.groups.iter().flat_map(|g| &g.members).collect();
        let targets: Vec<SocketAddr> = (members.into_iter())
            .filter(|m| Some(*m) != shared.me.as_ref())
            .filter_map(|m| member_addr(&st, m, shared.args.ha_heartbeat_port))
            .collect();
        st.counters.heartbeats_sent += targets.len() as u64;
        (hb, targets, changed)
    };
    // A gateway's loop runs every interval (it sends the sync deltas and renews the lease).
    if changed || shared.me.is_some() {
        shared.wake.notify_one();
    }
    match encode_heartbeat(&hb) {
        Ok(bytes) => {
            for to in targets {
                // A member that is down or unreachable is what the heartbeats detect.
                let _ = socket.send_to(&bytes, to);
            }
        }
        Err(e) => warn!(error = %e, "heartbeat too large to send"),
    }
}
