//! Word-sized writes of the datapath's addresses. The BPF backend turns a copy or a clear of a
//! byte array (alignment 1) into a call to a byte-loop `memmove` / `memset` (about 100
//! instructions for 16 bytes, several per packet). Every address field these helpers are used on
//! sits at an 8-byte-aligned offset of an 8-byte-aligned struct (asserted below), so it is
//! written as two 64-bit words.

use core::mem::{align_of, offset_of, size_of};

use portcullis_common::{half_mask, DropEvent, FlowKey, PrefixKey};

use crate::parse::Packet;
use crate::policy::Query;

const _: () = {
    assert!(align_of::<Packet>() == 8 && align_of::<FlowKey>() == 8);
    assert!(align_of::<Query>() == 8 && align_of::<DropEvent>() == 8);
    assert!(offset_of!(Packet, src) % 8 == 0 && offset_of!(Packet, dst) % 8 == 0);
    // `parse` clears sport, dport, proto, tcp_flags and kind as one word.
    assert!(offset_of!(Packet, sport) % 8 == 0);
    assert!(offset_of!(Packet, l3_off) >= offset_of!(Packet, sport) + 8);
    assert!(offset_of!(FlowKey, addr_lo) % 8 == 0 && offset_of!(FlowKey, addr_hi) % 8 == 0);
    assert!(offset_of!(FlowKey, protocol) % 4 == 0);
    assert!(offset_of!(Query, src) % 8 == 0 && offset_of!(Query, dst) % 8 == 0);
    assert!(offset_of!(DropEvent, src) % 8 == 0 && offset_of!(DropEvent, dst) % 8 == 0);
    // `set_prefix_key` writes group, len and padding as the first word.
    assert!(align_of::<PrefixKey>() == 8 && offset_of!(PrefixKey, group) == 0);
    assert!(offset_of!(PrefixKey, len) == 4 && offset_of!(PrefixKey, addr) == 8);
};

/// Fills `key` for `peer` (a Query address) masked to `len` bits: three word stores.
///
/// # Safety
/// `peer` must be 8-byte aligned (see above); `key` valid for writes.
#[inline(always)]
pub unsafe fn set_prefix_key(key: *mut PrefixKey, group: u32, peer: &[u8; 16], len: u32) {
    let (k, p) = (key as *mut u64, peer.as_ptr() as *const u64);
    // Little endian: group in bytes 0-3, len in byte 4, padding 5-7 zero.
    k.write(group as u64 | (len as u64) << 32);
    k.add(1)
        .write((u64::from_be(p.read()) & half_mask(len)).to_be());
    k.add(2)
        .write((u64::from_be(p.add(1).read()) & half_mask(len.saturating_sub(64))).to_be());
}

/// `*dst = *src`.
///
/// # Safety
/// Both must be 8-byte aligned: address fields of the structs asserted above.
#[inline(always)]
pub unsafe fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    let (d, s) = (dst.as_mut_ptr() as *mut u64, src.as_ptr() as *const u64);
    d.write(s.read());
    d.add(1).write(s.add(1).read());
}

/// `*dst = ipv4_mapped(v4)`.
///
/// # Safety
/// As [`copy_addr`].
#[inline(always)]
pub unsafe fn set_ipv4_mapped(dst: &mut [u8; 16], v4: [u8; 4]) {
    let d = dst.as_mut_ptr() as *mut u64;
    d.write(0);
    let [a, b, c, e] = v4;
    d.add(1)
        .write(u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, e]));
}

/// Zeroes `*v` with 4-byte stores (volatile, so they are not merged back into a `memset` call).
///
/// # Safety
/// `T` must be valid all-zero, and `v` valid for writes.
#[inline(always)]
pub unsafe fn zero<T>(v: *mut T) {
    const { assert!(align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4)) };
    let words = v as *mut u32;
    for i in 0..size_of::<T>() / 4 {
        words.add(i).write_volatile(0);
    }
}

/// A key's three padding bytes, cleared by three byte stores (a `[0; 3]` becomes a `memset` call).
#[inline(always)]
pub fn zero_pad3() -> [u8; 3] {
    let mut pad = core::mem::MaybeUninit::<[u8; 3]>::uninit();
    let p = pad.as_mut_ptr() as *mut u8;
    // SAFETY: three writes inside `pad`, which is then fully initialised.
    unsafe {
        for i in 0..3 {
            p.add(i).write_volatile(0);
        }
        pad.assume_init()
    }
}
