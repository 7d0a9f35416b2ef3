//! A low-rate frame sender on a raw `AF_PACKET` socket in the generator namespace: the probe of
//! the policy-change latency and the established flows of the survival test. Unlike the
//! live-frames generator, each frame costs one `send` (no `synchronize_rcu` per call), so it can
//! send a frame every few tens of microseconds. Frames carry a sequence number (u32, big-endian)
//! right after the UDP header and a marker after it, which `perf_sink` checks for gaps.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::frame::udp_frame;
use crate::lab::{self, in_ns};

/// Marks a frame of a watched stream (after its sequence number); same value as the kernel side.
const WATCH_MAGIC: u32 = 0x5043_4c53;

/// One stream of frames: fixed addresses and destination port; the source port is fixed (an
/// established flow) or new for every frame (`fresh_sport`: every frame is a new flow; after
/// the ports run out, the destination's last two bytes change).
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub fresh_sport: bool,
}

pub struct Sender {
    fd: OwnedFd,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    frame_len: usize,
}

/// Where streams are sent from: an interface of a namespace, the thread pinned to a CPU.
#[derive(Clone, Debug)]
pub struct SenderSite {
    pub ns: String,
    pub cpu: usize,
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub frame_len: usize,
}

impl SenderSite {
    /// Sends `streams` from this site (see [`Sender::run`]) until `stop`; call it on a thread of
    /// its own.
    pub fn run(&self, streams: &[Stream], interval: Duration, stop: &AtomicBool) -> Result<Sent> {
        in_ns(&self.ns, || {
            lab::pin_current_thread(self.cpu);
            Sender::open(self.ifindex, self.src_mac, self.dst_mac, self.frame_len)?
                .run(streams, interval, stop)
        })
    }
}

/// What a [`Sender::run`] sent.
pub struct Sent {
    /// Frames sent per stream (= the next sequence number of each).
    pub frames: Vec<u64>,
    /// Mean time between two rounds (one frame of every stream).
    pub interval: Duration,
}

impl Sender {
    /// Opens the socket; call this on a thread inside the generator namespace (`ifindex` there).
    pub fn open(
        ifindex: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        frame_len: usize,
    ) -> Result<Sender> {
        // SAFETY: plain socket call; protocol 0 = send only, nothing is received.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_protocol = 0;
        // SAFETY: valid fd and sockaddr of the stated length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("bind AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        Ok(Sender {
            fd,
            src_mac,
            dst_mac,
            frame_len,
        })
    }

    /// Sends one frame as it is; false when the device queue was full (the frame is not sent).
    pub fn send(&self, frame: &[u8]) -> Result<bool> {
        // SAFETY: valid fd and buffer.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e).context("send on the AF_PACKET socket");
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends one frame of every stream per round, a round every `interval` (best effort: the
    /// thread sleeps in between), until `stop` is set. Returns frames sent per stream.
    pub fn run(&self, streams: &[Stream], interval: Duration, stop: &AtomicBool) -> Result<Sent> {
        let mut frames: Vec<Vec<u8>> = streams
            .iter()
            .map(|s| {
                udp_frame(
                    self.src_mac,
                    self.dst_mac,
                    s.src,
                    s.dst,
                    s.sport,
                    s.dport,
                    self.frame_len,
                )
            })
            .collect();
        let mut seq = vec![0u64; streams.len()];
        let start = Instant::now();
        let mut rounds = 0u64;
        let mut sport_next: u16 = 1024;
        let mut dst_next: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            for (i, s) in streams.iter().enumerate() {
                if s.fresh_sport {
                    if sport_next == u16::MAX {
                        // Source ports used up: the next destination of the stream's /16 (the
                        // sink watches the /16), so no frame repeats a flow for 2^16 rounds of
                        // 64k ports (the first round's destination is `s.dst` itself).
                        sport_next = 1024;
                        dst_next = (dst_next + 1) & 0xffff;
                        frames[i] = udp_frame(
                            self.src_mac,
                            self.dst_mac,
                            s.src,
                            Ipv4Addr::from(
                                u32::from(s.dst) & 0xffff_0000
                                    | (u32::from(s.dst).wrapping_add(dst_next) & 0xffff),
                            ),
                            s.sport,
                            s.dport,
                            self.frame_len,
                        );
                    }
                    frames[i][34..36].copy_from_slice(&sport_next.to_be_bytes());
                    sport_next += 1;
                }
                let f = &mut frames[i];
                f[42..46].copy_from_slice(&(seq[i] as u32).to_be_bytes());
                f[46..50].copy_from_slice(&WATCH_MAGIC.to_be_bytes());
                if self.send(f)? {
                    seq[i] += 1;
                }
            }
            rounds += 1;
            std::thread::sleep(interval);
        }
        Ok(Sent {
            frames: seq,
            interval: start.elapsed() / rounds.max(1) as u32,
        })
    }
}
