//! One queue's AF_XDP sockets: one on the cluster leg's queue q and one on the external leg's
//! queue q, sharing one UMEM, so a frame received on one leg goes out of the other by handing
//! its descriptor to the other socket's TX ring, without a copy in user space. Each socket has
//! its own fill and completion rings; frames not held by the kernel wait in a free pool.
//!
//! Sockets are created with libxdp's program load inhibited: the gateway's own XDP program
//! steers frames into its XSKMAP, where the caller inserts [`QueueRings::fds`].

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use serde::Serialize;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::setup::{self, SetupError};

/// Descriptors taken from a ring per call.
const BATCH: usize = 64;

/// A bind right after the queue's previous socket closed can fail with EBUSY while the kernel
/// releases it: retried this many times, this far apart, before it counts as a busy queue.
const BIND_RETRIES: u32 = 10;
const BIND_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Frames the kernel sends per sendto(2) in copy mode (`TX_BATCH_SIZE` in net/xdp/xsk.c).
const COPY_TX_BATCH: u32 = 32;

/// Busy-poll time per `recvfrom`/`sendto` (µs) when [`RingConfig::busy_poll`] is on.
const BUSY_POLL_US: libc::c_int = 20;

/// Whether the sockets use zero-copy (the driver's DMA straight into the UMEM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ZeroCopy {
    /// Zero-copy when the driver offers it, else copy mode (the kernel decides at bind; the
    /// result is read back and reported in [`LegStats::zero_copy`]).
    #[default]
    Auto,
    /// Zero-copy or fail with [`SetupError::ZeroCopyUnavailable`].
    Force,
    /// Copy mode.
    Off,
}

/// Sizes and modes of one queue's sockets.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Frames in the UMEM shared by both legs.
    pub frame_count: u32,
    /// Bytes per frame: a power of two, at least 2048.
    pub frame_size: u32,
    pub rx_size: u32,
    pub tx_size: u32,
    pub fill_size: u32,
    pub comp_size: u32,
    /// Spin on the rings (with `SO_PREFER_BUSY_POLL`) instead of sleeping in poll(2).
    pub busy_poll: bool,
    pub zero_copy: ZeroCopy,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            frame_count: 4096,
            frame_size: 2048,
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 2048,
            comp_size: 2048,
            busy_poll: false,
            zero_copy: ZeroCopy::Auto,
        }
    }
}

/// One of the gateway's two legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Leg {
    Cluster,
    External,
}

impl Leg {
    /// The leg a frame received on this one is transmitted out of.
    pub fn other(self) -> Leg {
        match self {
            Leg::Cluster => Leg::External,
            Leg::External => Leg::Cluster,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What [`QueueRings::poll`] does with a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the frame, as the handler left it, out of the other leg.
    Transmit,
    /// Recycle the frame.
    Drop,
}

/// The kernel's `XDP_STATISTICS` of one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelXskStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_invalid_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// Counters of one leg's socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LegStats {
    pub iface: String,
    pub queue: u32,
    /// Frames received on this leg.
    pub received: u64,
    /// Frames sent out of this leg (completed by the kernel).
    pub transmitted: u64,
    /// Frames received on this leg that the handler dropped.
    pub dropped: u64,
    /// Frames bound for this leg lost because its TX ring was full.
    pub tx_ring_full: u64,
    /// Frames in this socket's fill ring.
    pub fill_level: u32,
    pub zero_copy: bool,
    pub kernel: KernelXskStats,
}

/// Counters of both legs of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RingStats {
    pub cluster: LegStats,
    pub external: LegStats,
}

/// One leg's socket: its rings and counters.
struct LegRings {
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames waiting to be put on the TX ring at the end of this poll.
    pending_tx: Vec<FrameDesc>,
    /// Frames in the fill ring, and on the TX ring not yet completed.
    in_fill: u32,
    in_tx: u32,
    stats: LegStats,
}

impl LegRings {
    fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

/// The AF_XDP sockets of one queue on both legs, sharing one UMEM.
pub struct QueueRings {
    legs: [LegRings; 2],
    umem: Umem,
    /// Frames held by neither the kernel nor a pending TX.
    free: Vec<FrameDesc>,
    /// Scratch for descriptors taken from an RX or completion ring.
    batch: Vec<FrameDesc>,
    fill_target: u32,
    busy_poll: bool,
}

impl QueueRings {
    /// Opens queue `queue` of both legs. Errors name the interface and the fix; nothing opened
    /// before an error stays open.
    pub fn open(
        cluster_if: &str,
        external_if: &str,
        queue: u32,
        cfg: &RingConfig,
    ) -> Result<QueueRings, SetupError> {
        let config_err = |reason: String| SetupError::Config {
            iface: cluster_if.to_string(),
            queue,
            reason,
        };
        if cluster_if == external_if {
            return Err(config_err(format!(
                "the external leg must be another interface than the cluster leg ({external_if})"
            )));
        }
        setup::check_queue(cluster_if, queue)?;
        setup::check_queue(external_if, queue)?;
        let size = |n: u32| QueueSize::new(n).map_err(|e| config_err(e.to_string()));
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| config_err(e.to_string()))?)
            .fill_queue_size(size(cfg.fill_size)?)
            .comp_queue_size(size(cfg.comp_size)?)
            .build()
            .map_err(|e| config_err(e.to_string()))?;
        let frame_count = NonZeroU32::new(cfg.frame_count)
            .ok_or_else(|| config_err("frame_count must not be 0".into()))?;
        let bytes = u64::from(cfg.frame_count) * u64::from(cfg.frame_size);
        let (umem, free) = Umem::new(umem_cfg, frame_count, false).map_err(|e| {
            let both = format!("{cluster_if}+{external_if}");
            setup::umem_error(&both, queue, bytes, setup::os_error(&e))
        })?;

        let mut bind_flags = BindFlags::XDP_USE_NEED_WAKEUP;
        match cfg.zero_copy {
            ZeroCopy::Auto => {}
            ZeroCopy::Force => bind_flags |= BindFlags::XDP_ZEROCOPY,
            ZeroCopy::Off => bind_flags |= BindFlags::XDP_COPY,
        }
        let socket_cfg = SocketConfig::builder()
            .rx_queue_size(size(cfg.rx_size)?)
            .tx_queue_size(size(cfg.tx_size)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind_flags)
            .build();
        let cluster = open_leg(&umem, cluster_if, queue, socket_cfg, cfg)?;
        let external = open_leg(&umem, external_if, queue, socket_cfg, cfg)?;

        let mut rings = QueueRings {
            legs: [cluster, external],
            umem,
            free,
            batch: vec![FrameDesc::default(); BATCH],
            // Half the frames wait in the two fill rings; the rest cover frames in flight on
            // TX and the refill.
            fill_target: cfg.fill_size.min(cfg.frame_count / 4),
            busy_poll: cfg.busy_poll,
        };
        rings.refill();
        Ok(rings)
    }

    /// The sockets' descriptors, `[cluster, external]`, for the caller's XSKMAP.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        // SAFETY: the sockets stay open while their queues, owned by `self`, live; the
        // returned borrows cannot outlive `self`.
        self.legs
            .each_ref()
            .map(|leg| unsafe { BorrowedFd::borrow_raw(leg.fd()) })
    }

    /// Waits up to `timeout_ms` (negative: forever) for frames on either leg — poll(2), or
    /// spinning when busy polling — then hands each received frame to `handle`, which may
    /// rewrite it in place: [`Action::Transmit`] sends it out of the other leg,
    /// [`Action::Drop`] recycles it. Returns the number of frames received.
    pub fn poll(
        &mut self,
        timeout_ms: i32,
        mut handle: impl FnMut(Leg, &mut [u8]) -> Action,
    ) -> io::Result<usize> {
        self.reap();
        self.refill();
        if !self.rx_ready() {
            self.wait(timeout_ms)?;
        }
        let received =
            self.receive(Leg::Cluster, &mut handle) + self.receive(Leg::External, &mut handle);
        self.transmit(Leg::Cluster)?;
        self.transmit(Leg::External)?;
        Ok(received)
    }

    /// Counters of both legs, with the kernel's statistics of each socket.
    pub fn stats(&self) -> RingStats {
        let [cluster, external] = self.legs.each_ref().map(|leg| {
            let mut stats = leg.stats.clone();
            stats.fill_level = leg.in_fill;
            match leg.rx.fd().xdp_statistics() {
                Ok(k) => {
                    stats.kernel = KernelXskStats {
                        rx_dropped: k.rx_dropped(),
                        rx_ring_full: k.rx_ring_full(),
                        rx_fill_ring_empty_descs: k.rx_fill_ring_empty_descs(),
                        tx_invalid_descs: k.tx_invalid_descs(),
                        tx_ring_empty_descs: k.tx_ring_empty_descs(),
                    }
                }
                Err(e) => tracing::debug!(iface = %stats.iface, "XDP_STATISTICS: {e}"),
            }
            stats
        });
        RingStats { cluster, external }
    }

    /// Takes transmitted frames back from both completion rings.
    fn reap(&mut self) {
        for leg in &mut self.legs {
            if leg.in_tx == 0 {
                continue;
            }
            // SAFETY: the completion ring hands back frames of this UMEM that the kernel is
            // done with; `batch` only receives their descriptors.
            let n = unsafe { leg.comp.consume(&mut self.batch) };
            self.free.extend_from_slice(&self.batch[..n]);
            leg.in_tx -= n as u32;
            leg.stats.transmitted += n as u64;
        }
    }

    /// Tops both fill rings up to the target from the free pool.
    fn refill(&mut self) {
        for leg in &mut self.legs {
            let want = self.fill_target.saturating_sub(leg.in_fill) as usize;
            let from = self.free.len().saturating_sub(want);
            // SAFETY: frames in the free pool belong to this UMEM and nothing else uses them;
            // those the ring took are removed from the pool below.
            let n = unsafe { leg.fill.produce(&self.free[from..]) };
            self.free.truncate(self.free.len() - n);
            leg.in_fill += n as u32;
        }
    }

    fn rx_ready(&mut self) -> bool {
        self.legs.iter_mut().any(|leg| leg.rx.nb_avail(1) > 0)
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        if self.busy_poll {
            let deadline = (timeout_ms >= 0)
                .then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
            loop {
                for leg in &self.legs {
                    // A non-blocking recvfrom runs the driver's busy-poll (and wakes the fill
                    // ring in copy mode); its result carries nothing.
                    // SAFETY: a zero-length receive into no buffer on a socket we own.
                    unsafe {
                        libc::recvfrom(
                            leg.fd(),
                            std::ptr::null_mut(),
                            0,
                            libc::MSG_DONTWAIT,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    };
                }
                if self.rx_ready() || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
        }
        let mut fds = self.legs.each_ref().map(|leg| libc::pollfd {
            fd: leg.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is an array of two initialised pollfd structs alive for the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) } < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Receives a batch on `leg` and queues or recycles each frame as `handle` says.
    fn receive(&mut self, leg: Leg, handle: &mut impl FnMut(Leg, &mut [u8]) -> Action) -> usize {
        let [cluster, external] = &mut self.legs;
        let (this, other) = match leg {
            Leg::Cluster => (cluster, external),
            Leg::External => (external, cluster),
        };
        // SAFETY: the RX ring hands over frames of this UMEM the kernel has filled and let go.
        let n = unsafe { this.rx.consume(&mut self.batch) };
        this.in_fill -= n as u32;
        this.stats.received += n as u64;
        for desc in &mut self.batch[..n] {
            // SAFETY: the frame was just received, so neither the kernel nor another
            // descriptor refers to it until it is queued again below.
            let mut data = unsafe { self.umem.data_mut(desc) };
            match handle(leg, data.contents_mut()) {
                Action::Transmit => other.pending_tx.push(*desc),
                Action::Drop => {
                    this.stats.dropped += 1;
                    self.free.push(*desc);
                }
            }
        }
        n
    }

    /// Puts the frames bound for `leg` on its TX ring and kicks the kernel to send them
    /// (copy mode sends only inside sendto(2)).
    fn transmit(&mut self, leg: Leg) -> io::Result<()> {
        let leg = &mut self.legs[leg.index()];
        if !leg.pending_tx.is_empty() {
            // SAFETY: pending frames belong to this UMEM and are referenced nowhere else; the
            // ones the ring did not take go back to the free pool.
            let n = unsafe { leg.tx.produce(&leg.pending_tx) };
            leg.in_tx += n as u32;
            let lost = leg.pending_tx.len() - n;
            leg.stats.tx_ring_full += lost as u64;
            self.free.extend(leg.pending_tx.drain(..).skip(n));
        }
        if leg.stats.zero_copy {
            if leg.in_tx > 0 && leg.tx.needs_wakeup() {
                leg.tx.wakeup()?;
            }
        } else {
            // Copy mode sends at most COPY_TX_BATCH frames per sendto(2): kick until the frames
            // not yet completed could all have gone (extra kicks on an empty ring cost a
            // syscall each, nothing else).
            for _ in 0..leg.in_tx.div_ceil(COPY_TX_BATCH) {
                leg.tx.wakeup()?;
            }
        }
        Ok(())
    }
}

/// Creates and binds one leg's socket on the shared UMEM.
fn open_leg(
    umem: &Umem,
    iface: &str,
    queue: u32,
    socket_cfg: SocketConfig,
    cfg: &RingConfig,
) -> Result<LegRings, SetupError> {
    let name: Interface = iface.parse().map_err(|_| SetupError::NoSuchInterface {
        iface: iface.to_string(),
    })?;
    let forced = cfg.zero_copy == ZeroCopy::Force;
    let mut attempt = 0;
    let (tx, rx, rings) = loop {
        // SAFETY: each (interface, queue) pair is bound once per UMEM (`open` refuses one
        // interface for both legs), so the rule for rebinding a bound pair does not apply.
        match unsafe { Socket::new(socket_cfg, umem, &name, queue) } {
            Ok(socket) => break socket,
            Err(e) => {
                let err = setup::os_error(&e);
                if err.raw_os_error() == Some(libc::EBUSY) && attempt < BIND_RETRIES {
                    attempt += 1;
                    std::thread::sleep(BIND_RETRY_DELAY);
                    continue;
                }
                return Err(setup::socket_error(iface, queue, forced, err));
            }
        }
    };
    let io_err = |what, source| SetupError::Io {
        iface: iface.to_string(),
        queue,
        what,
        source,
    };
    let (fill, comp) = rings.ok_or_else(|| {
        io_err(
            "fill and completion rings",
            io::Error::other("libxdp handed none out for a new (interface, queue)"),
        )
    })?;
    let fd = rx.fd().as_raw_fd();
    let zero_copy = is_zero_copy(fd).map_err(|e| io_err("getsockopt XDP_OPTIONS", e))?;
    if forced && !zero_copy {
        return Err(SetupError::ZeroCopyUnavailable {
            iface: iface.to_string(),
            queue,
        });
    }
    if cfg.busy_poll {
        set_busy_poll(fd, iface);
    }
    tracing::info!(iface, queue, zero_copy, "AF_XDP socket bound");
    Ok(LegRings {
        tx,
        rx,
        fill,
        comp,
        pending_tx: Vec::with_capacity(BATCH * 2),
        in_fill: 0,
        in_tx: 0,
        stats: LegStats {
            iface: iface.to_string(),
            queue,
            zero_copy,
            ..LegStats::default()
        },
    })
}

/// Whether the bound socket is in zero-copy mode (`XDP_OPTIONS`).
fn is_zero_copy(fd: RawFd) -> io::Result<bool> {
    let mut flags: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: XDP_OPTIONS writes a `struct xdp_options` (one u32) into `flags`, of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
}

/// Asks the kernel to busy-poll this socket's queue; a kernel without it only costs speed.
fn set_busy_poll(fd: RawFd, iface: &str) {
    for (opt, value) in [
        (libc::SO_PREFER_BUSY_POLL, 1),
        (libc::SO_BUSY_POLL, BUSY_POLL_US),
        (libc::SO_BUSY_POLL_BUDGET, BATCH as libc::c_int),
    ] {
        // SAFETY: `value` is a c_int alive for the call, as these options expect.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::warn!(
                iface,
                opt,
                "busy polling not available: {}",
                io::Error::last_os_error()
            );
        }
    }
}
