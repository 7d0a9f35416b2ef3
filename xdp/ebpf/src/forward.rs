//! XDP forwarding of an allowed packet: the next hop (the flow's cached one, else
//! `bpf_fib_lookup`), MAC rewrite, TTL / hop limit decrement (with the IPv4 checksum updated) and
//! redirect to the egress interface.
//!
//! The established fast path: a packet of a known flow whose next hop for its direction was cached
//! at the current `NEXT_HOP_EPOCH` (and recently: `hop_fresh`) skips the FIB lookup. The first
//! packet of each direction after a route, neighbour, link or address change (the daemon bumps the
//! epoch) looks the route up again and re-caches it.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use portcullis_common::{hop_fresh, hop_stamp, ConfirmedFlow, NextHop};
use portcullis_ebpf_common::parse::{be16, bytes, ptr_at, Frame, Packet, Stop};
use portcullis_ebpf_common::words::zero;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The next-hop cache of one direction of a flow, and the clock it is judged by.
pub struct HopCache {
    pub flow: &'static mut ConfirmedFlow,
    /// The packet comes from the flow's `lo` endpoint (`hops[0]`), else `hops[1]`.
    pub from_lo: bool,
    /// `NEXT_HOP_EPOCH` read before any lookup (a change during the lookup leaves the entry
    /// stale, never wrongly current).
    pub epoch: u32,
    pub now: u64,
}

impl HopCache {
    #[inline(always)]
    fn slot(&mut self) -> &mut NextHop {
        if self.from_lo {
            &mut self.flow.hops[0]
        } else {
            &mut self.flow.hops[1]
        }
    }

    /// The cached hop, when still usable.
    #[inline(always)]
    fn get(&mut self) -> Option<NextHop> {
        let f = &self.flow;
        if !hop_fresh(f.hop_epoch, f.hop_stamp, self.epoch, self.now) {
            return None;
        }
        let hop = *self.slot();
        (hop.valid != 0).then_some(hop)
    }

    /// Caches `hop`; a stale entry's other direction is forgotten with it.
    #[inline(always)]
    fn put(&mut self, hop: &NextHop) {
        let f = &mut *self.flow;
        if !hop_fresh(f.hop_epoch, f.hop_stamp, self.epoch, self.now) {
            f.hops[0].valid = 0;
            f.hops[1].valid = 0;
            f.hop_epoch = self.epoch;
            f.hop_stamp = hop_stamp(self.now);
        }
        *self.slot() = *hop;
    }
}

/// How a packet was forwarded, or not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Redirected with the flow's cached next hop.
    Cached(u32),
    /// Redirected after a FIB lookup.
    Looked(u32),
    /// Left to the kernel (no route, no neighbour, local delivery, TTL expiring, too big, ...).
    Pass,
}

/// Forwards the packet in XDP with `cache`'s next hop or a FIB lookup (cached into `cache`).
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    fib: &mut FibParams,
    cache: Option<HopCache>,
) -> Forwarded {
    try_forward(ctx, pkt, fib, cache).unwrap_or(Forwarded::Pass)
}

#[inline(always)]
fn try_forward(
    ctx: &XdpContext,
    pkt: &Packet,
    fib: &mut FibParams,
    mut cache: Option<HopCache>,
) -> Result<Forwarded, Stop> {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let off = pkt.l3_off;
    // TTL / hop limit and the packet's IP length (the MTU check). The TTL is reached through a
    // 2-byte window ([TTL, protocol]; [next header, hop limit]): a 1-byte bounds check compiles
    // to `ptr >= end`, which the verifier does not accept.
    let (window_at, ttl_in_window, ip_len) = if pkt.is_v6 {
        let h = bytes::<8>(&frame, off)?;
        (off + 6, 1, be16([h[4], h[5]]) as u32 + 40)
    } else {
        let h = bytes::<4>(&frame, off)?;
        (off + 8, 0, be16([h[2], h[3]]) as u32)
    };
    let window = ptr_at::<[u8; 2]>(&frame, window_at)? as *mut [u8; 2];
    // SAFETY: bounds checked by ptr_at; the index is 0 or 1.
    let ttl = unsafe { (window as *mut u8).add(ttl_in_window) };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *ttl } <= 1 {
        return Err(Stop::Pass);
    }
    let cached = cache.as_mut().and_then(|c| c.get());
    let (hop, looked) = match cached {
        Some(hop) => (hop, false),
        None => {
            let hop = fib_lookup(ctx, pkt, &frame, fib, ip_len)?;
            if let Some(c) = cache.as_mut() {
                c.put(&hop);
            }
            (hop, true)
        }
    };
    if ip_len > hop.mtu as u32 {
        return Err(Stop::Pass);
    }
    // SAFETY: bounds checked by ptr_at above.
    unsafe { *ttl -= 1 };
    if !pkt.is_v6 {
        let csum = ptr_at::<u16>(&frame, off + 10)? as *mut u16;
        // SAFETY: bounds checked by ptr_at. Incremental checksum update (RFC 1624) for TTL - 1,
        // as the kernel's ip_decrease_ttl.
        unsafe {
            let mut c = core::ptr::read_unaligned(csum) as u32;
            c += 0x0100u16.to_be() as u32;
            c = (c + (c >= 0xffff) as u32) & 0xffff;
            core::ptr::write_unaligned(csum, c as u16);
        }
    }
    let eth = ptr_at::<[u8; 12]>(&frame, 0)? as *mut [u8; 12];
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&hop.dmac);
        macs[6..].copy_from_slice(&hop.smac);
        core::ptr::write_unaligned(eth, macs);
    }
    // SAFETY: helper without memory arguments.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    Ok(if looked {
        Forwarded::Looked(action)
    } else {
        Forwarded::Cached(action)
    })
}

/// `bpf_fib_lookup` for the packet as received: its next hop, or `Stop::Pass` when the kernel
/// must handle it.
#[inline(always)]
fn fib_lookup(
    ctx: &XdpContext,
    pkt: &Packet,
    frame: &Frame,
    fib: &mut FibParams,
    ip_len: u32,
) -> Result<NextHop, Stop> {
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    unsafe { zero(fib as *mut FibParams) };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.l4_protocol = pkt.proto;
    fib.sport = pkt.sport;
    fib.dport = pkt.dport;
    fib.__bindgen_anon_1.tot_len = ip_len as u16;
    let off = pkt.l3_off;
    if pkt.is_v6 {
        let h = bytes::<4>(frame, off)?;
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo =
            u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) & 0x0fff_ffffu32.to_be();
        // SAFETY: writing plain integers into unions.
        unsafe {
            let src = &mut fib.__bindgen_anon_3.ipv6_src;
            let dst = &mut fib.__bindgen_anon_4.ipv6_dst;
            for i in 0..4 {
                src[i] = u32::from_ne_bytes([
                    pkt.src[4 * i],
                    pkt.src[4 * i + 1],
                    pkt.src[4 * i + 2],
                    pkt.src[4 * i + 3],
                ]);
                dst[i] = u32::from_ne_bytes([
                    pkt.dst[4 * i],
                    pkt.dst[4 * i + 1],
                    pkt.dst[4 * i + 2],
                    pkt.dst[4 * i + 3],
                ]);
            }
        }
    } else {
        let h = bytes::<20>(frame, off)?;
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = h[1];
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    }
    // SAFETY: ctx is the program's context; fib is a valid, sized parameter block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Stop::Pass);
    }
    let mut hop = NextHop {
        ifindex: fib.ifindex,
        // SAFETY: on success the kernel wrote the egress MTU into this union member.
        mtu: unsafe { fib.__bindgen_anon_1.mtu_result },
        valid: 1,
        ..NextHop::default()
    };
    hop.dmac.copy_from_slice(&fib.dmac);
    hop.smac.copy_from_slice(&fib.smac);
    Ok(hop)
}
