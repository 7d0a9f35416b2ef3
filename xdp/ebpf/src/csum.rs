//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`) for the
//! fields SNAT rewrites. Words are read and written in the packet's memory order: the ones'
//! complement sum is byte-order independent (RFC 1071), so no swapping is needed.
//!
//! Packet offsets go through [`at`]: SNAT reaches several fields from the same variable header
//! offsets, and LLVM otherwise folds them into one base pointer plus an offset whose lower bound
//! the verifier loses ("R7 min value is negative").

use aya_ebpf::programs::XdpContext;
use portcullis_ebpf_common::parse::{ptr_at, Frame, Stop};

/// The sum of `~old + new` over the 16-bit words a rewrite changes.
#[derive(Clone, Copy)]
pub struct Diff(u32);

impl Diff {
    #[inline(always)]
    pub fn new() -> Diff {
        Diff(0)
    }

    /// One 16-bit word `old` replaced by `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 = fold(self.0 + (!old) as u32 + new as u32);
    }

    /// A 16-byte address replaced (IPv4 mapped on both sides: the common `::ffff` words cancel).
    #[inline(always)]
    pub fn addr(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        for i in 0..8 {
            let o = u16::from_ne_bytes([old[2 * i], old[2 * i + 1]]);
            let n = u16::from_ne_bytes([new[2 * i], new[2 * i + 1]]);
            self.word(o, n);
        }
    }

    /// The checksum `check` updated by this difference.
    #[inline(always)]
    pub fn apply(&self, check: u16) -> u16 {
        !(fold((!check) as u32 + self.0) as u16)
    }
}

/// End-around carry of a 32-bit sum of at most three 16-bit terms.
#[inline(always)]
fn fold(s: u32) -> u32 {
    let s = (s & 0xffff) + (s >> 16);
    (s & 0xffff) + (s >> 16)
}

/// The packet bounds of `ctx`, read in the calling function: in a BPF-to-BPF call (`snat`,
/// `neighbour`), LLVM would otherwise hoist the context loads into the caller and pass the
/// bounds as arguments, and the verifier refuses arithmetic on a `data_end` argument.
#[inline(always)]
pub fn frame(ctx: &XdpContext) -> Frame {
    // SAFETY: `ctx.ctx` is the program's valid `xdp_md`; volatile reads keep the loads here.
    unsafe {
        let md = ctx.ctx;
        Frame::new(
            core::ptr::read_volatile(&(*md).data) as usize,
            core::ptr::read_volatile(&(*md).data_end) as usize,
        )
    }
}

/// A bounds-checked pointer to a `T` at packet offset `off`, the offset opaque to the optimiser
/// (see the module).
#[inline(always)]
pub fn at<T>(f: &Frame, off: usize) -> Result<*mut T, Stop> {
    // SAFETY: a volatile read of a local.
    let off = unsafe { core::ptr::read_volatile(&off) };
    Ok(ptr_at::<T>(f, off)? as *mut T)
}

/// `N` packet bytes at `off`, read in place (as `parse::bytes`, the offset opaque).
#[inline(always)]
pub fn peek<'a, const N: usize>(f: &Frame, off: usize) -> Result<&'a [u8; N], Stop> {
    // SAFETY: bounds checked; u8 arrays have alignment 1.
    Ok(unsafe { &*at::<[u8; N]>(f, off)? })
}

/// The 16-bit word at `off`, in memory order.
#[inline(always)]
pub fn load16(f: &Frame, off: usize) -> Result<u16, Stop> {
    let p = at::<u16>(f, off)?;
    // SAFETY: bounds checked by ptr_at; unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes the 16-bit word at `off`, in memory order.
#[inline(always)]
pub fn store16(f: &Frame, off: usize, v: u16) -> Result<(), Stop> {
    let p = at::<u16>(f, off)?;
    // SAFETY: bounds checked by ptr_at; unaligned write.
    unsafe { core::ptr::write_unaligned(p, v) };
    Ok(())
}

/// Applies `diff` to the checksum at `off`. `udp`: a stored 0 means "no checksum" (IPv4) and
/// stays 0, and a result of 0 is sent as 0xffff.
#[inline(always)]
pub fn update(f: &Frame, off: usize, diff: &Diff, udp: bool) -> Result<(), Stop> {
    let old = load16(f, off)?;
    if udp && old == 0 {
        return Ok(());
    }
    let mut new = diff.apply(old);
    if udp && new == 0 {
        new = 0xffff;
    }
    store16(f, off, new)
}
