//! XDP programs of the perf harness.
//!
//! - `perf_gen`: run by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on a template
//!   Ethernet/IPv4/UDP frame; rewrites source, destination and ports from a random entry of
//!   `TARGETS` (or the entries from `GEN_CFG.index` on, one per frame, in probe mode), fixes the
//!   IPv4 checksum and redirects the frame out of `GEN_CFG.ifindex`.
//! - `perf_sink`: counts every frame (per CPU) and drops it; with `SINK_CFG` flags set it also
//!   records (source, destination, destination port) of IPv4/UDP frames in `SEEN` and updates the
//!   `WATCH` entry of watched tuples (first/last seen time, frames, sequence gaps).
//! - `perf_pass`: bare `XDP_PASS` (the "no filter" contender: kernel forwarding only).
//! - `perf_fwd`: bare XDP redirect to `FWD_CFG.ifindex` with MACs rewritten (the XDP ceiling).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values by reference on purpose (as in xdp/ebpf): no copies onto the BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_perf_common::*;

/// Index 0: generator settings. Written by the harness.
#[btf_map]
static GEN_CFG: Array<GenConfig, 1> = Array::new();

/// Index 0: the frame's first 44 bytes (Ethernet, IPv4, UDP headers and two payload bytes),
/// rewritten into every frame: live-frames mode recycles pages, and a frame the gateway forwarded
/// through the kernel comes back with its MACs and TTL rewritten. Written by the harness.
#[btf_map]
static GEN_HDR: Array<[u32; 11], 1> = Array::new();

/// Index 0: frames generated so far in probe mode (entry `index + n` for the n-th frame). Reset
/// by the harness before each probe run.
#[btf_map]
static GEN_SEQ: Array<u32, 1> = Array::new();

/// Index 0: earliest time (bpf_ktime_get_ns) of the next paced frame. Written by `perf_gen`.
#[btf_map]
static GEN_PACE: Array<u64, 1> = Array::new();

/// Index 0: frames the generator redirected (sent), per CPU. Read by the harness.
#[btf_map]
static GEN_SENT: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Packet tuples the generator draws from. Written by the harness.
#[btf_map]
static TARGETS: Array<Target, 1048576> = Array::new();

/// Index 0: frames seen by the sink, per CPU. Written by `perf_sink`, read by the harness.
#[btf_map]
static SINK_COUNT: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Index 0: bit 0 (`SINK_RECORD`) = record tuples in `SEEN`, bit 1 (`SINK_WATCH`) = update
/// `WATCH` entries. Written by the harness.
#[btf_map]
static SINK_CFG: Array<u32, 1> = Array::new();

/// (src, dst & `WATCH_DST_MASK`, dport as u32, all network order) → what the sink saw. Entries are inserted (zeroed)
/// by the harness; the sink only updates existing ones.
#[btf_map]
static WATCH: HashMap<[u32; 3], Watch, 1024> = HashMap::new();

/// (src, dst, dport as u32, all network order) → frames seen. Written by `perf_sink` when
/// recording; read and cleared by the harness (the verdict-agreement probes).
#[btf_map]
static SEEN: HashMap<[u32; 3], u64, 65536> = HashMap::new();

/// Bare forwarder settings: [out ifindex, dst MAC (6 bytes) + src MAC (6 bytes) packed in 3 u32].
#[btf_map]
static FWD_CFG: Array<[u32; 4], 1> = Array::new();

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;

#[xdp]
pub fn perf_gen(ctx: XdpContext) -> u32 {
    try_gen(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    if start + ETH_LEN + IP_LEN + UDP_LEN > ctx.data_end() {
        return None;
    }
    let cfg = GEN_CFG.get(0)?;
    if cfg.gap_ns != 0 {
        let next = GEN_PACE.get_ptr_mut(0)?;
        // SAFETY: helper without preconditions; value pointer of a successful lookup, one
        // generator thread at a time.
        unsafe {
            let now = bpf_ktime_get_ns();
            if now < *next {
                return Some(xdp_action::XDP_DROP);
            }
            let gap = cfg.gap_ns as u64;
            // Catch up at most 64 frames after a stall; never burst more.
            *next = if *next + 64 * gap < now {
                now
            } else {
                *next + gap
            };
        }
    }
    let idx = if cfg.flags & GEN_PROBE != 0 {
        let seq = GEN_SEQ.get_ptr_mut(0)?;
        // SAFETY: value pointer of a successful lookup; one generator thread at a time.
        unsafe {
            let n = *seq;
            *seq = n + 1;
            cfg.index + n
        }
    } else {
        // SAFETY: helper without preconditions.
        (unsafe { bpf_get_prandom_u32() }) & cfg.mask
    };
    let t = TARGETS.get(idx)?;
    let (sport, dst) = if cfg.flags & GEN_RANDOM_SPORT != 0 {
        // SAFETY: helper without preconditions.
        let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        ((r1 as u16 | 1024).to_be(), t.dst | (r2 & t.dst_random))
    } else {
        (t.sport, t.dst)
    };
    let hdr = GEN_HDR.get(0)?;
    if start + 44 > ctx.data_end() {
        return None;
    }
    let ip = (start + ETH_LEN) as *mut u8;
    // The IPv4 checksum, incrementally: the template's (addresses zero) plus the two addresses.
    // Ones'-complement sums are byte-order independent, so native 16-bit halves are fine.
    let mut sum =
        (!(hdr[6] as u16)) as u32 + (t.src & 0xffff) + (t.src >> 16) + (dst & 0xffff) + (dst >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    // SAFETY: bounds checked above; unaligned writes into the frame.
    unsafe {
        let words = start as *mut u32;
        let mut w = 0;
        while w < 11 {
            core::ptr::write_unaligned(words.add(w), hdr[w]);
            w += 1;
        }
        core::ptr::write_unaligned(ip.add(12) as *mut u32, t.src);
        core::ptr::write_unaligned(ip.add(16) as *mut u32, dst);
        core::ptr::write_unaligned(ip.add(10) as *mut u16, !(sum as u16));
        let udp = ip.add(IP_LEN);
        core::ptr::write_unaligned(udp as *mut u16, sport);
        core::ptr::write_unaligned(udp.add(2) as *mut u16, t.dport);
        // UDP checksum 0: none (allowed for IPv4).
        core::ptr::write_unaligned(udp.add(6) as *mut u16, 0);
    }
    if let Some(c) = GEN_SENT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    // SAFETY: helper; an unknown ifindex makes the redirect fail (frame dropped).
    Some(unsafe { bpf_redirect(cfg.ifindex, 0) } as u32)
}

#[xdp]
pub fn perf_sink(ctx: XdpContext) -> u32 {
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    let flags = SINK_CFG.get(0).copied().unwrap_or(0);
    if flags != 0 {
        record(&ctx, flags);
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn record(ctx: &XdpContext, flags: u32) {
    let start = ctx.data();
    if start + ETH_LEN + IP_LEN + UDP_LEN + 8 > ctx.data_end() {
        return;
    }
    let p = start as *const u8;
    // SAFETY: bounds checked above.
    let key = unsafe {
        if core::ptr::read_unaligned(p.add(12) as *const u16) != 0x0800u16.to_be()
            || *p.add(ETH_LEN) != 0x45
            || *p.add(ETH_LEN + 9) != 17
        {
            return;
        }
        [
            core::ptr::read_unaligned(p.add(ETH_LEN + 12) as *const u32),
            core::ptr::read_unaligned(p.add(ETH_LEN + 16) as *const u32),
            core::ptr::read_unaligned(p.add(ETH_LEN + IP_LEN + 2) as *const u16) as u32,
        ]
    };
    if flags & SINK_RECORD != 0 {
        match SEEN.get_ptr_mut(&key) {
            // SAFETY: value pointer from a successful lookup.
            Some(v) => unsafe { *v += 1 },
            None => {
                let _ = SEEN.insert(&key, &1, 0);
            }
        }
    }
    if flags & SINK_WATCH != 0 {
        // Watched tuples are matched on the destination's /16 (the probe varies the rest).
        let key = [key[0], key[1] & WATCH_DST_MASK, key[2]];
        // SAFETY: bounds checked above.
        let magic = unsafe {
            core::ptr::read_unaligned(p.add(ETH_LEN + IP_LEN + UDP_LEN + 4) as *const u32)
        };
        if magic != WATCH_MAGIC.to_be() {
            return;
        }
        if let Some(w) = WATCH.get_ptr_mut(&key) {
            // SAFETY: helper without preconditions; bounds of the sequence number checked above;
            // `w` is a value pointer of a successful lookup (one sink CPU).
            unsafe {
                let now = bpf_ktime_get_ns();
                let seq = u32::from_be(core::ptr::read_unaligned(
                    p.add(ETH_LEN + IP_LEN + UDP_LEN) as *const u32
                )) as u64;
                let w = &mut *w;
                if w.frames == 0 {
                    w.first_ns = now;
                }
                w.last_ns = now;
                w.frames += 1;
                if seq > w.next_seq {
                    w.lost += seq - w.next_seq;
                    if w.gap_first_ns == 0 {
                        w.gap_first_ns = now;
                    }
                    w.gap_last_ns = now;
                }
                w.next_seq = seq + 1;
            }
        }
    }
}

#[xdp]
pub fn perf_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn perf_fwd(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_LEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let Some(cfg) = FWD_CFG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let p = start as *mut u32;
    // SAFETY: 12 bytes of MACs within the checked Ethernet header.
    unsafe {
        core::ptr::write_unaligned(p, cfg[1]);
        core::ptr::write_unaligned(p.add(1), cfg[2]);
        core::ptr::write_unaligned(p.add(2), cfg[3]);
    }
    // SAFETY: helper; an unknown ifindex makes the redirect fail (frame dropped).
    unsafe { bpf_redirect(cfg[0], 0) as u32 }
}

portcullis_ebpf_common::program_epilogue!();
