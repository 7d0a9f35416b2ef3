//! What happens to allowed packets and who judges them: one enum per option, for the `CONFIG`
//! flags, the status and the command line.

use portcullis_common::{CONFIG_FLAG_AFXDP, CONFIG_FLAG_HYBRID, CONFIG_FLAG_XDP_FORWARD};
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

/// Who judges and forwards the legs' packets (`--datapath`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// The XDP program, for every packet.
    #[default]
    Xdp,
    /// The AF_XDP engine in user space, for every routable packet (the XDP program only steers
    /// them to its sockets, and judges the rest).
    Afxdp,
    /// XDP for packets of known flows; the AF_XDP engine for the first packets, which it judges
    /// and whose flows it writes into the XDP program's flow table.
    Hybrid,
}

impl DatapathMode {
    /// The mode a `CONFIG.flags` value says.
    pub fn from_config_flags(flags: u32) -> DatapathMode {
        if flags & CONFIG_FLAG_AFXDP != 0 {
            DatapathMode::Afxdp
        } else if flags & CONFIG_FLAG_HYBRID != 0 {
            DatapathMode::Hybrid
        } else {
            DatapathMode::Xdp
        }
    }

    /// Its `CONFIG_FLAG_*` bit.
    pub fn config_flag(self) -> u32 {
        match self {
            DatapathMode::Xdp => 0,
            DatapathMode::Afxdp => CONFIG_FLAG_AFXDP,
            DatapathMode::Hybrid => CONFIG_FLAG_HYBRID,
        }
    }

    /// Whether the AF_XDP engine runs.
    pub fn has_engine(self) -> bool {
        self != DatapathMode::Xdp
    }
}

impl std::fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatapathMode::Xdp => "xdp",
            DatapathMode::Afxdp => "afxdp",
            DatapathMode::Hybrid => "hybrid",
        })
    }
}
