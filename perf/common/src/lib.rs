//! Kernel/user types of the benchmark harness's programs (`perf/ebpf`: the generator and the sink)
//! and the harness that steers them (`perf/src`), defined once, `#[repr(C)]` and size-asserted.
#![no_std]

/// One generated packet's addresses. Addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Target {
    pub src: u32,
    pub dst: u32,
    /// Destination bits drawn at random per frame in new-flow mode (a block of addresses with
    /// the same verdict), so a small table (cache-resident) still spreads destinations widely.
    pub dst_random: u32,
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<Target>() == 16);

/// Generator settings (host byte order). Written by the harness before each run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenConfig {
    /// Interface the frames are redirected out of.
    pub ifindex: u32,
    /// `TARGETS` index mask (entries used: mask + 1, a power of two).
    pub mask: u32,
    /// Bit 0: random source port per packet (new flows); else the target's `sport`.
    /// Bit 1: probe mode: entry `index + n` for the n-th frame (n from `GEN_SEQ`).
    pub flags: u32,
    pub index: u32,
    /// Pacing: at most one frame per `gap_ns` nanoseconds (0: as fast as possible); frames over
    /// the rate are dropped inside the generator and never sent.
    pub gap_ns: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 24);

pub const GEN_RANDOM_SPORT: u32 = 1;
pub const GEN_PROBE: u32 = 2;

/// `SINK_CFG` bits and the magic of watched frames.
pub const WATCH_MAGIC: u32 = 0x5043_4c53;
pub const SINK_RECORD: u32 = 1;
pub const SINK_WATCH: u32 = 2;

/// What the sink saw of one watched tuple (times from `bpf_ktime_get_ns`, CLOCK_MONOTONIC).
/// Frames of watched tuples carry a sequence number (u32, big-endian) right after the UDP header
/// and then `WATCH_MAGIC` (big-endian); other frames (the generator's) are never counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Watch {
    pub first_ns: u64,
    pub last_ns: u64,
    pub frames: u64,
    /// Sequence number expected next.
    pub next_seq: u64,
    /// Frames missing between received sequence numbers.
    pub lost: u64,
    /// First and last time a gap in the sequence was seen (0: never).
    pub gap_first_ns: u64,
    pub gap_last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Watch>() == 56);

/// The part of the (network-order) destination a `WATCH` key keeps: its first two bytes.
pub const WATCH_DST_MASK: u32 = u32::from_ne_bytes([0xff, 0xff, 0, 0]);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding, no pointers.
    unsafe impl aya::Pod for Target {}
    unsafe impl aya::Pod for GenConfig {}
    unsafe impl aya::Pod for Watch {}
}
