//! Return codes of the programs (the kernel's `enum xdp_action` and `TC_ACT_*`), for the loaders'
//! tests and tools; the programs return the same values.

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
