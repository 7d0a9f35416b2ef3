//! Test helpers shared by the tests of every crate: throw-away network namespaces (one, the
//! pod / gateway / external line of the gateway's traffic tests, or two gateways side by side on
//! the same segments), bpffs pin directories, commands, hand-built packets and policy tables. A dev-dependency
//! only. Entering a namespace, running a command and looking up an interface are
//! `portcullis-lab`'s (`netns`, `command`, `iface`), which the lab, perf and these helpers share;
//! here they panic instead of returning errors, as tests want.

mod cmd;
pub mod differential;
mod netns;
pub mod packet;
mod tables;

pub use cmd::{check_flow_record_limit, ifindex, require_root, run, sh};
pub use netns::{EdgeNs, EdgePairNs, NetNs, PinDir};
pub use packet::*;
pub use tables::egress_allowed;

use std::path::PathBuf;

/// The project's read-only `shared/` directory (conformance cases and their runner):
/// `$PORTCULLIS_SHARED` when set (scripts/test sets it), else the one beside this checkout.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}
