//! Test helpers shared by the tests of every crate: throw-away network namespaces, commands, and
//! hand-built packets. A dev-dependency only; `lab` has its own namespace code for real use.

mod cmd;
mod netns;
pub mod packet;

pub use cmd::{ifindex, not_root, sh};
pub use netns::NetNs;
pub use packet::*;

use std::path::PathBuf;

/// The project's read-only `shared/` directory (conformance cases and their runner):
/// `$PORTCULLIS_SHARED` when set (scripts/test sets it), else the one beside this checkout.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}
