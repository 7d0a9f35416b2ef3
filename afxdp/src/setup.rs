//! The checks that turn a bad AF_XDP set-up into one error naming the interface, the queue and
//! the fix: a missing interface, a queue the interface does not have, a queue another AF_XDP
//! socket holds, zero-copy forced where the driver does not offer it, and a UMEM larger than the
//! locked-memory limit. [`crate::rings::QueueRings::open`] runs them before and while opening.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use portcullis_netlink::Rtnl;

/// Why a queue's AF_XDP sockets could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("interface {iface}: no such interface in this network namespace (check the name with `ip link`)")]
    NoSuchInterface { iface: String },
    #[error("interface {iface}: queue {queue} asked for, but it has {available} rx queue(s); ask for fewer queues or raise the interface's (`ethtool -L {iface} combined N`)")]
    QueueOutOfRange {
        iface: String,
        queue: u32,
        available: u32,
    },
    #[error("interface {iface} queue {queue}: another AF_XDP socket is bound there (EBUSY); stop the other user of that queue (another gateway, xdpsock) or pick another queue")]
    SocketBusy { iface: String, queue: u32 },
    #[error("interface {iface} queue {queue}: zero-copy was forced but the driver does not offer it; use zero-copy `auto` or `off` (veth never has it)")]
    ZeroCopyUnavailable { iface: String, queue: u32 },
    #[error("interface {iface} queue {queue}: the UMEM of {bytes} bytes cannot be locked in memory ({source}); raise RLIMIT_MEMLOCK to at least {bytes} bytes per queue (`ulimit -l`, systemd `LimitMEMLOCK=`) or give the process CAP_IPC_LOCK")]
    LockedMemory {
        iface: String,
        queue: u32,
        bytes: u64,
        source: io::Error,
    },
    #[error("interface {iface} queue {queue}: invalid ring configuration: {reason}")]
    Config {
        iface: String,
        queue: u32,
        reason: String,
    },
    #[error("interface {iface} queue {queue}: {what}: {source}")]
    Io {
        iface: String,
        queue: u32,
        what: &'static str,
        source: io::Error,
    },
}

/// The interface's index, or [`SetupError::NoSuchInterface`].
pub fn ifindex(iface: &str) -> Result<u32, SetupError> {
    let missing = || SetupError::NoSuchInterface {
        iface: iface.to_string(),
    };
    let name = CString::new(iface).map_err(|_| missing())?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// How many rx queues `iface` has in use (what an AF_XDP bind checks the queue id against):
/// ETHTOOL_GCHANNELS, or the link's queue count from rtnetlink for drivers without it. Both
/// answer for the calling thread's network namespace (sysfs would answer for the mounter's).
pub fn rx_queue_count(iface: &str) -> Result<u32, SetupError> {
    let index = ifindex(iface)?;
    match ethtool_rx_queues(iface) {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => link_rx_queues(iface, index),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => link_rx_queues(iface, index),
        Err(source) => Err(SetupError::Io {
            iface: iface.to_string(),
            queue: 0,
            what: "ETHTOOL_GCHANNELS",
            source,
        }),
    }
}

fn ethtool_rx_queues(iface: &str) -> io::Result<u32> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL reads `ifr` and writes `channels`, both alive and correctly sized for
    // ETHTOOL_GCHANNELS.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(channels.rx_count + channels.combined_count)
}

fn link_rx_queues(iface: &str, index: u32) -> Result<u32, SetupError> {
    let io_err = |source| SetupError::Io {
        iface: iface.to_string(),
        queue: 0,
        what: "RTM_GETLINK",
        source,
    };
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let reply = Rtnl::new()
        .and_then(|mut rtnl| rtnl.request(RouteNetlinkMessage::GetLink(msg)))
        .map_err(io_err)?;
    let RouteNetlinkMessage::NewLink(link) = reply else {
        return Err(io_err(io::Error::other("unexpected reply")));
    };
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::NumRxQueues(n) => Some(*n),
            _ => None,
        })
        .ok_or_else(|| io_err(io::Error::other("no IFLA_NUM_RX_QUEUES in the reply")))
}

/// Checks before opening: the interface exists and has rx queue `queue`.
pub fn check_queue(iface: &str, queue: u32) -> Result<(), SetupError> {
    let available = rx_queue_count(iface)?;
    if queue >= available {
        return Err(SetupError::QueueOutOfRange {
            iface: iface.to_string(),
            queue,
            available,
        });
    }
    Ok(())
}

/// The OS error under an error from xsk-rs (which wraps it as its `source`), or the error's
/// own message when it has none.
pub(crate) fn os_error(err: &(dyn std::error::Error + 'static)) -> io::Error {
    match err.source().and_then(|s| s.downcast_ref::<io::Error>()) {
        Some(os) => match os.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(os.kind(), os.to_string()),
        },
        None => io::Error::other(err.to_string()),
    }
}

/// Classifies a failed UMEM registration: ENOMEM, ENOBUFS (the kernel's memlock accounting) and
/// EPERM mean locked memory.
pub(crate) fn umem_error(iface: &str, queue: u32, bytes: u64, err: io::Error) -> SetupError {
    match err.raw_os_error() {
        Some(libc::ENOMEM | libc::ENOBUFS | libc::EPERM | libc::EAGAIN) => {
            SetupError::LockedMemory {
                iface: iface.to_string(),
                queue,
                bytes,
                source: err,
            }
        }
        _ => SetupError::Io {
            iface: iface.to_string(),
            queue,
            what: "create the UMEM",
            source: err,
        },
    }
}

/// Classifies a failed socket creation (bind) on `iface` queue `queue`.
pub(crate) fn socket_error(
    iface: &str,
    queue: u32,
    zero_copy_forced: bool,
    err: io::Error,
) -> SetupError {
    let iface = iface.to_string();
    match err.raw_os_error() {
        Some(libc::EBUSY) => SetupError::SocketBusy { iface, queue },
        Some(libc::ENODEV) => SetupError::NoSuchInterface { iface },
        Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT) if zero_copy_forced => {
            SetupError::ZeroCopyUnavailable { iface, queue }
        }
        _ => SetupError::Io {
            iface,
            queue,
            what: "create the AF_XDP socket",
            source: err,
        },
    }
}
