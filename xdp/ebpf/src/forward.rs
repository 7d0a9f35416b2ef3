//! XDP forwarding of an allowed packet: `bpf_fib_lookup`, MAC rewrite, TTL / hop limit decrement
//! (with the IPv4 checksum updated) and redirect to the egress interface.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use portcullis_common::actions::XDP_PASS;
use portcullis_ebpf_common::parse::{be16, bytes, ptr_at, Frame, Packet, Stop};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `bpf_fib_lookup` and redirect with MACs rewritten and TTL / hop limit decremented. `XDP_PASS`
/// means "let the kernel handle it" (no route, no neighbour, local delivery, TTL expiring, ...).
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, fib: &mut FibParams) -> u32 {
    try_forward(ctx, pkt, fib).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, pkt: &Packet, fib: &mut FibParams) -> Result<u32, Stop> {
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    *fib = unsafe { core::mem::zeroed() };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.l4_protocol = pkt.proto;
    fib.sport = pkt.sport;
    fib.dport = pkt.dport;
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let off = pkt.l3_off;
    if pkt.is_v6 {
        let h = bytes::<40>(&frame, off)?;
        if h[7] <= 1 {
            return Err(Stop::Pass);
        }
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = be16([h[4], h[5]]);
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
        let h = bytes::<20>(&frame, off)?;
        if h[8] <= 1 {
            return Err(Stop::Pass);
        }
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = be16([h[2], h[3]]);
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
    if pkt.is_v6 {
        let hop = ptr_at::<u8>(&frame, off + 7)? as *mut u8;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *hop -= 1 };
    } else {
        let ttl = ptr_at::<u8>(&frame, off + 8)? as *mut u8;
        let csum = ptr_at::<u16>(&frame, off + 10)? as *mut u16;
        // SAFETY: bounds checked by ptr_at. Incremental checksum update (RFC 1624) for TTL - 1,
        // as the kernel's ip_decrease_ttl.
        unsafe {
            *ttl -= 1;
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
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        core::ptr::write_unaligned(eth, macs);
    }
    // SAFETY: helper without memory arguments.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) };
    Ok(action as u32)
}
