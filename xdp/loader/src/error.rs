//! The one error type of both loaders: interfaces, the object, maps, pins, links and tables that
//! cannot be held.

use std::path::PathBuf;

use aya::maps::MapError;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0:?} not found in this network namespace (check the name with `ip link`)")]
    UnknownInterface(String),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// `object` names the program object ("XDP", "node-hook").
    #[error("map {name} missing from the {object} object")]
    MissingMap {
        name: &'static str,
        object: &'static str,
    },
    #[error("program {name} missing from the {object} object")]
    MissingProgram {
        name: &'static str,
        object: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A gateway SNAT configuration that cannot be enforced; nothing of it was written.
    #[error("SNAT configuration refused, nothing changed: {0}")]
    InvalidSnat(String),
    #[error("netlink route socket (the gateway follows route and neighbour changes with it): {0}")]
    Netlink(#[source] std::io::Error),
    #[error(
        "pinned map {name} in {dir} does not match this version's (key bytes, value bytes, \
         capacity: pinned {pinned:?}, this version {expected:?}): it was made by another \
         version of Portcullis. Stop its daemon and remove {dir} (enforcement restarts \
         with empty flow tables), or run the version that made it"
    )]
    IncompatiblePin {
        name: String,
        dir: PathBuf,
        pinned: (u32, u32, u32),
        expected: (u32, u32, u32),
    },
    #[error("parsing the {object} object: {message}")]
    Object {
        object: &'static str,
        message: String,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("interface {iface}: attaching XDP in native (driver) mode failed: {source}; if its driver has no native XDP, run with --generic-xdp")]
    NativeXdp {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Another XDP program (another gateway's, on other pins, or a foreign one) holds the
    /// interface: the kernel refuses a second XDP attachment.
    #[error(
        "interface {iface} already has an XDP program attached (another portcullis gateway with \
         another --pin-dir, or a foreign program; see `ip -d link show {iface}` and `bpftool net`): \
         stop that daemon or detach its program, then start again"
    )]
    InterfaceBusy { iface: String },
    #[error("link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error(
        "rule set {rule_set} has {ranges} port ranges, more than the {max} one entry can hold; \
         it is used by the group of policies [{policies}]"
    )]
    TooManyPortRanges {
        rule_set: usize,
        ranges: usize,
        max: usize,
        policies: String,
    },
    #[error(
        "map {name} is full ({capacity} entries for both generations); the update is not \
         applied, the generation in force stays"
    )]
    TableFull { name: &'static str, capacity: u32 },
    /// An update that would not fit, refused before any map is written.
    #[error(
        "map {map} cannot hold the update: it needs {needed} {what}, more than the {max} one \
         generation may use (half of its {capacity} entries: the generation in force stays \
         beside it); the update is refused as a whole and the generation in force stays"
    )]
    TooManyEntries {
        map: &'static str,
        what: &'static str,
        needed: usize,
        max: usize,
        capacity: u32,
    },
    #[error("table refers to {what} {index}, which does not exist")]
    BadIndex { what: &'static str, index: u32 },
    #[error("the node has {count} addresses, more than the {max} the node hook holds")]
    TooManyHostAddrs { count: usize, max: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn map_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// A map delete whose entry is already gone (deleted by the program or a concurrent GC) is fine.
pub fn ignore_missing(r: Result<(), MapError>, name: &'static str) -> Result<bool> {
    if matches!(&r, Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT))
    {
        warn!(map = name, "entry vanished during delete");
    }
    delete_if_present(r, name)
}

/// A map delete of an entry that may well not exist: whether it did.
pub fn delete_if_present(r: Result<(), MapError>, name: &'static str) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(source) => Err(Error::Map { name, source }),
    }
}
