//! XDP programs of the perf harness.
//!
//! - `perf_gen`: run by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on a template
//!   Ethernet/IPv4/UDP frame; rewrites source, destination and ports from a random entry of
//!   `TARGETS` (or the entry `GEN_CFG.index` in probe mode), fixes the IPv4 checksum and redirects
//!   the frame out of `GEN_CFG.ifindex`.
//! - `perf_sink`: counts every frame (per CPU) and drops it; with `SINK_CFG` record flag set it also
//!   records (source, destination, destination port) of IPv4/UDP frames in `SEEN`.
//! - `perf_pass`: bare `XDP_PASS` (the "no filter" contender: kernel forwarding only).
//! - `perf_fwd`: bare XDP redirect to `FWD_CFG.ifindex` with MACs rewritten (the XDP ceiling).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values by reference on purpose (as in xdp/ebpf): no copies onto the BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::generated::{bpf_get_prandom_u32, bpf_redirect},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// One generated packet's addresses. Addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Target {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<Target>() == 12);

/// Generator settings (host byte order). Written by the harness before each run.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenConfig {
    /// Interface the frames are redirected out of.
    pub ifindex: u32,
    /// `TARGETS` index mask (entries used: mask + 1, a power of two).
    pub mask: u32,
    /// Bit 0: random source port per packet (new flows); else the target's `sport`.
    /// Bit 1: probe mode: always use entry `index`.
    pub flags: u32,
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 16);

pub const GEN_RANDOM_SPORT: u32 = 1;
pub const GEN_PROBE: u32 = 2;

/// Index 0: generator settings. Written by the harness.
#[btf_map]
static GEN_CFG: Array<GenConfig, 1> = Array::new();

/// Index 0: the frame's first 44 bytes (Ethernet, IPv4, UDP headers and two payload bytes),
/// rewritten into every frame: live-frames mode recycles pages, and a frame the gateway forwarded
/// through the kernel comes back with its MACs and TTL rewritten. Written by the harness.
#[btf_map]
static GEN_HDR: Array<[u32; 11], 1> = Array::new();

/// Packet tuples the generator draws from. Written by the harness.
#[btf_map]
static TARGETS: Array<Target, 1048576> = Array::new();

/// Index 0: frames seen by the sink, per CPU. Written by `perf_sink`, read by the harness.
#[btf_map]
static SINK_COUNT: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Index 0: 1 = record tuples in `SEEN`. Written by the harness.
#[btf_map]
static SINK_CFG: Array<u32, 1> = Array::new();

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
    let idx = if cfg.flags & GEN_PROBE != 0 {
        cfg.index
    } else {
        // SAFETY: helper without preconditions.
        (unsafe { bpf_get_prandom_u32() }) & cfg.mask
    };
    let t = TARGETS.get(idx)?;
    let sport = if cfg.flags & GEN_RANDOM_SPORT != 0 {
        // SAFETY: helper without preconditions.
        ((unsafe { bpf_get_prandom_u32() }) as u16 | 1024).to_be()
    } else {
        t.sport
    };
    let hdr = GEN_HDR.get(0)?;
    if start + 44 > ctx.data_end() {
        return None;
    }
    let ip = (start + ETH_LEN) as *mut u8;
    // SAFETY: bounds checked above; unaligned writes into the frame.
    unsafe {
        let words = start as *mut u32;
        let mut w = 0;
        while w < 11 {
            core::ptr::write_unaligned(words.add(w), hdr[w]);
            w += 1;
        }
        core::ptr::write_unaligned(ip.add(12) as *mut u32, t.src);
        core::ptr::write_unaligned(ip.add(16) as *mut u32, t.dst);
        core::ptr::write_unaligned(ip.add(10) as *mut u16, 0);
        let udp = ip.add(IP_LEN);
        core::ptr::write_unaligned(udp as *mut u16, sport);
        core::ptr::write_unaligned(udp.add(2) as *mut u16, t.dport);
        // UDP checksum 0: none (allowed for IPv4).
        core::ptr::write_unaligned(udp.add(6) as *mut u16, 0);
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < IP_LEN {
            sum += u16::from_be_bytes([*ip.add(i), *ip.add(i + 1)]) as u32;
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        core::ptr::write_unaligned(ip.add(10) as *mut u16, (!(sum as u16)).to_be());
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
    if SINK_CFG.get(0).copied() == Some(1) {
        record(&ctx);
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn record(ctx: &XdpContext) {
    let start = ctx.data();
    if start + ETH_LEN + IP_LEN + UDP_LEN > ctx.data_end() {
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
    match SEEN.get_ptr_mut(&key) {
        // SAFETY: value pointer from a successful lookup.
        Some(v) => unsafe { *v += 1 },
        None => {
            let _ = SEEN.insert(&key, &1, 0);
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

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
