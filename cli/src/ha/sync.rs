//! The gateways' state-sync streams. Each gateway listens on the sync port and reads what its
//! peers push (replicas for the daemon's loop to write into its maps, the end of a full dump for
//! its readiness); and keeps one outgoing stream to every peer of its groups, which opens with a
//! full dump (the daemon's loop makes it) followed by every delta.
//!
//! Bounded lag: each outgoing stream has a queue of at most [`MAX_QUEUED`] bytes; a peer that
//! falls further behind has its stream dropped (counted as `sync_overflows`) and reopened, which
//! starts again with a full dump.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portcullis_ha::protocol::{encode_entries, encode_frame, Frame, FrameDecoder, VERSION};
use portcullis_ha::replica::Replica;
use tracing::{debug, info, warn};

use super::{member_addr, Shared};

/// Bytes queued for one peer before its stream is dropped.
const MAX_QUEUED: usize = 64 << 20;

/// A chunk of encoded frames queued for a peer, and when it was queued (for the lag).
struct Chunk {
    bytes: Vec<u8>,
    queued: Instant,
}

struct Outgoing {
    tx: SyncSender<Chunk>,
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// The outgoing streams, by peer.
pub(super) struct SyncStreams {
    shared: Arc<Shared>,
    outgoing: Arc<Mutex<BTreeMap<String, Outgoing>>>,
}

impl SyncStreams {
    pub fn start(shared: Arc<Shared>) -> Result<(SyncStreams, Vec<std::thread::JoinHandle<()>>)> {
        let port = shared.args.ha_sync_port;
        let listener =
            bind(port).with_context(|| format!("listening for sync streams (TCP {port})"))?;
        listener.set_nonblocking(true)?;
        let outgoing = Arc::new(Mutex::new(BTreeMap::new()));
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ha-sync-in".into())
                .spawn(move || accept_loop(&shared, &listener))?
        };
        let connect = {
            let (shared, outgoing) = (Arc::clone(&shared), Arc::clone(&outgoing));
            std::thread::Builder::new()
                .name("ha-sync-out".into())
                .spawn(move || connect_loop(&shared, &outgoing))?
        };
        Ok((SyncStreams { shared, outgoing }, vec![accept, connect]))
    }

    /// Queues `entries` for every open stream (a delta), or with `full_to` for that peer's
    /// stream followed by the end of its full dump.
    pub fn send(&self, entries: &[Replica], full_to: Option<&str>) {
        let mut bytes = encode_entries(entries);
        if let Some(peer) = full_to {
            let end = Frame::DumpEnd {
                entries: entries.len() as u64,
            };
            bytes.extend(encode_frame(&end).expect("a dump's end always encodes"));
            self.queue(peer, bytes, entries.len());
            return;
        }
        if bytes.is_empty() {
            return;
        }
        let peers: Vec<String> = self.outgoing.lock().unwrap().keys().cloned().collect();
        for peer in peers {
            self.queue(&peer, bytes.clone(), entries.len());
        }
    }

    fn queue(&self, peer: &str, bytes: Vec<u8>, entries: usize) {
        let mut outgoing = self.outgoing.lock().unwrap();
        let Some(out) = outgoing.get(peer) else {
            return;
        };
        let len = bytes.len();
        let over = out.queued_bytes.load(Ordering::Relaxed) + len > MAX_QUEUED;
        let sent = !over
            && match out.tx.try_send(Chunk {
                bytes,
                queued: Instant::now(),
            }) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            };
        if sent {
            out.queued_bytes.fetch_add(len, Ordering::Relaxed);
            self.shared.lock().counters.replicas_sent += entries as u64;
        } else {
            // Its writer sees the channel close, drops the stream; the connect loop reopens it
            // with a full dump.
            outgoing.remove(peer);
            self.shared.lock().counters.sync_overflows += 1;
            warn!(
                peer,
                "sync stream fell behind; reopening it with a full dump"
            );
        }
    }

    pub fn stop(&self) {
        self.outgoing.lock().unwrap().clear();
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(16)?;
    Ok(socket.into())
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, from)) => {
                let shared = Arc::clone(shared);
                let _ = std::thread::Builder::new()
                    .name("ha-sync-reader".into())
                    .spawn(move || read_stream(&shared, stream, from));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads one peer's stream: its `Hello`, then replicas until it closes or sends garbage.
fn read_stream(shared: &Shared, mut stream: TcpStream, from: SocketAddr) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let detection = Duration::from_millis(shared.timing.detection_ms());
    let mut decoder = FrameDecoder::new();
    let mut peer: Option<String> = None;
    let mut buf = vec![0u8; 256 << 10];
    let mut last_frame = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // A peer that sends nothing (not even keepalives) for the detection time is gone.
                if last_frame.elapsed() > detection * 4 {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        last_frame = Instant::now();
        decoder.feed(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    shared.lock().refused(e.reason());
                    warn!(%from, ?peer, error = %e, "sync stream refused");
                    finish(shared, peer.as_deref());
                    return;
                }
            };
            match (frame, &peer) {
                (
                    Frame::Hello {
                        version, sender, ..
                    },
                    None,
                ) => {
                    if version != VERSION {
                        shared.lock().refused("version");
                        warn!(%from, version, "sync stream of another protocol version refused");
                        return;
                    }
                    if !shared.lock().membership.sync_peers().contains(&sender) {
                        shared.lock().refused("stranger");
                        warn!(%from, peer = %sender, "sync stream from a gateway of none of this gateway's groups refused");
                        return;
                    }
                    info!(%from, peer = %sender, "sync stream from a peer");
                    shared.lock().sync.stream_reset(&sender);
                    peer = Some(sender);
                }
                (_, None) | (Frame::Hello { .. }, Some(_)) => {
                    shared.lock().refused("sequence");
                    warn!(%from, "sync stream without a single opening Hello refused");
                    finish(shared, peer.as_deref());
                    return;
                }
                (Frame::Entries(entries), Some(_)) => {
                    let mut st = shared.lock();
                    st.counters.replicas_received += entries.len() as u64;
                    st.imports.extend(entries);
                    drop(st);
                    shared.wake.notify_one();
                }
                (Frame::DumpEnd { entries }, Some(p)) => {
                    debug!(peer = %p, entries, "full dump received");
                    shared.lock().sync.dump_complete(p);
                    shared.wake.notify_one();
                }
                (Frame::Keepalive, Some(_)) => {}
            }
        }
    }
    finish(shared, peer.as_deref());
}

fn finish(shared: &Shared, peer: Option<&str>) {
    if let Some(peer) = peer {
        shared.lock().sync.stream_reset(peer);
    }
}

/// Keeps one outgoing stream open to every peer of this gateway's groups.
fn connect_loop(shared: &Arc<Shared>, outgoing: &Arc<Mutex<BTreeMap<String, Outgoing>>>) {
    let me = shared.me.clone().unwrap_or_default();
    while !shared.stop.load(Ordering::Relaxed) {
        let peers: Vec<(String, SocketAddr)> = {
            let st = shared.lock();
            let members: std::collections::BTreeSet<&String> =
                st.groups.iter().flat_map(|g| &g.members).collect();
            (members.into_iter())
                .filter(|m| **m != me)
                .filter_map(|m| Some((m.clone(), member_addr(&st, m, shared.args.ha_sync_port)?)))
                .collect()
        };
        for (peer, addr) in peers {
            if outgoing.lock().unwrap().contains_key(&peer) {
                continue;
            }
            let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (tx, rx) = mpsc::sync_channel(1024);
            let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            outgoing.lock().unwrap().insert(
                peer.clone(),
                Outgoing {
                    tx,
                    queued_bytes: Arc::clone(&queued_bytes),
                },
            );
            let hello = Frame::Hello {
                version: VERSION,
                sender: me.clone(),
                group_hash: shared.lock().membership.group_hash(),
            };
            let Ok(hello) = encode_frame(&hello) else {
                warn!("this gateway's name cannot be sent in a sync stream");
                return;
            };
            let (shared2, outgoing2) = (Arc::clone(shared), Arc::clone(outgoing));
            let _ = std::thread::Builder::new()
                .name("ha-sync-writer".into())
                .spawn(move || {
                    write_stream(&shared2, stream, &peer, hello, &rx, &queued_bytes);
                    outgoing2.lock().unwrap().remove(&peer);
                });
        }
        std::thread::sleep(Duration::from_millis(shared.timing.interval_ms));
    }
}

/// Writes one peer's stream: the Hello, asks the daemon for a full dump, then every queued chunk,
/// with a keepalive every interval when idle.
fn write_stream(
    shared: &Shared,
    mut stream: TcpStream,
    peer: &str,
    hello: Vec<u8>,
    rx: &Receiver<Chunk>,
    queued_bytes: &std::sync::atomic::AtomicUsize,
) {
    if stream.write_all(&hello).is_err() {
        return;
    }
    info!(peer, "sync stream to a peer opened");
    shared.lock().dumps_wanted.insert(peer.to_string());
    shared.wake.notify_one();
    let keepalive = encode_frame(&Frame::Keepalive).expect("a keepalive always encodes");
    let interval = Duration::from_millis(shared.timing.interval_ms);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(
        shared.timing.detection_ms() * 4,
    )));
    while !shared.stop.load(Ordering::Relaxed) {
        let written = match rx.recv_timeout(interval) {
            Ok(chunk) => {
                queued_bytes.fetch_sub(chunk.bytes.len(), Ordering::Relaxed);
                let lag = chunk.queued.elapsed().as_millis() as u64;
                shared.lock().lag_ms.insert(peer.to_string(), lag);
                stream.write_all(&chunk.bytes)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => stream.write_all(&keepalive),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if written.is_err() {
            break;
        }
    }
    info!(peer, "sync stream to a peer closed");
}
