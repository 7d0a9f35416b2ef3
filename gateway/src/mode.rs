//! What happens to allowed packets: one enum for the option, the `CONFIG` flag, the status and the
//! command line.

use portcullis_common::CONFIG_FLAG_XDP_FORWARD;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Handed to the kernel stack (`XDP_PASS`), which routes them.
    #[default]
    Kernel,
    /// Routed in XDP (`bpf_fib_lookup` + `bpf_redirect`); packets the FIB cannot resolve
    /// (no neighbour entry, local destination, TTL expiring, VLAN-tagged) still go to the stack.
    Xdp,
}

impl ForwardMode {
    /// The mode a `CONFIG.flags` value says.
    pub fn from_config_flags(flags: u32) -> ForwardMode {
        if flags & CONFIG_FLAG_XDP_FORWARD != 0 {
            ForwardMode::Xdp
        } else {
            ForwardMode::Kernel
        }
    }

    /// Its `CONFIG_FLAG_*` bit.
    pub fn config_flag(self) -> u32 {
        match self {
            ForwardMode::Xdp => CONFIG_FLAG_XDP_FORWARD,
            ForwardMode::Kernel => 0,
        }
    }
}

impl std::fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ForwardMode::Kernel => "kernel",
            ForwardMode::Xdp => "xdp",
        })
    }
}
