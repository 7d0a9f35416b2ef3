//! Servers: one thread per destination namespace, entered with `setns`, serving every probed
//! address and port there. TCP: accept, write `P` and the source address seen, close. UDP: echo
//! each datagram and record the source address seen under the probe's token. SCTP: a raw socket per
//! address answers an INIT for a probed port with an INIT ACK and records its arrival and source
//! under the INIT's tag. The source seen is what a translating gateway left of the probe's.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};

use crate::client::udp_token_of;
use crate::error::LabError;
use crate::netns;
use crate::sctp;

/// What one namespace must serve.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerSpec {
    pub tcp: BTreeSet<SocketAddr>,
    pub udp: BTreeSet<SocketAddr>,
    /// SCTP ports per local address.
    pub sctp: std::collections::BTreeMap<IpAddr, BTreeSet<u16>>,
}

impl ServerSpec {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && self.sctp.is_empty()
    }
}

/// The source address a server saw, by probe token (UDP) or INIT tag (SCTP), for every probe that
/// reached one (shared by every server of a lab; the prober takes its entry out).
pub(crate) type Arrivals = Arc<Mutex<HashMap<u32, IpAddr>>>;

fn record(arrivals: &Arrivals, token: u32, seen: IpAddr) {
    arrivals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token, seen);
}

pub(crate) struct Server {
    pub netns: String,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

enum Endpoint {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Sctp {
        sock: Socket,
        v4: bool,
        ports: BTreeSet<u16>,
    },
}

impl Endpoint {
    fn fd(&self) -> RawFd {
        match self {
            Endpoint::Tcp(l) => l.as_raw_fd(),
            Endpoint::Udp(u) => u.as_raw_fd(),
            Endpoint::Sctp { sock, .. } => sock.as_raw_fd(),
        }
    }
}

fn stream_or_dgram(addr: SocketAddr, ty: Type, proto: SockProtocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s)
}

pub(crate) fn raw_sctp(addr: IpAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(
        domain,
        Type::RAW,
        Some(SockProtocol::from(sctp::IPPROTO_SCTP)),
    )?;
    s.bind(&SocketAddr::new(addr, 0).into())?;
    Ok(s)
}

fn open_endpoints(spec: &ServerSpec) -> io::Result<Vec<Endpoint>> {
    let mut eps = Vec::new();
    let ctx = |what: &str, addr: &dyn std::fmt::Display, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {addr}: {e}"))
    };
    for &addr in &spec.tcp {
        let s = stream_or_dgram(addr, Type::STREAM, SockProtocol::TCP)
            .and_then(|s| s.listen(128).map(|_| s))
            .map_err(|e| ctx("tcp listen", &addr, e))?;
        eps.push(Endpoint::Tcp(s.into()));
    }
    for &addr in &spec.udp {
        let s = stream_or_dgram(addr, Type::DGRAM, SockProtocol::UDP)
            .map_err(|e| ctx("udp bind", &addr, e))?;
        eps.push(Endpoint::Udp(s.into()));
    }
    for (&addr, ports) in &spec.sctp {
        let sock = raw_sctp(addr).map_err(|e| ctx("raw sctp socket", &addr, e))?;
        sock.set_nonblocking(true)?;
        eps.push(Endpoint::Sctp {
            sock,
            v4: addr.is_ipv4(),
            ports: ports.clone(),
        });
    }
    Ok(eps)
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

fn serve_one(ep: &Endpoint, arrivals: &Arrivals) {
    match ep {
        Endpoint::Tcp(l) => loop {
            match l.accept() {
                Ok((mut conn, peer)) => {
                    use std::io::Write;
                    // One write: the prober reads up to the newline.
                    let answer = format!("P{}\n", peer.ip());
                    if let Err(e) = conn.write_all(answer.as_bytes()) {
                        tracing::debug!(%peer, "tcp server write: {e}");
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    tracing::debug!("tcp accept: {e}");
                    break;
                }
            }
        },
        Endpoint::Udp(u) => {
            let mut buf = [0u8; 2048];
            loop {
                match u.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        if let Some(token) = udp_token_of(&buf[..n]) {
                            record(arrivals, token, peer.ip());
                        }
                        if let Err(e) = u.send_to(&buf[..n], peer) {
                            tracing::debug!(%peer, "udp echo: {e}");
                        }
                    }
                    Err(e) if would_block(&e) => break,
                    Err(e) => {
                        tracing::debug!("udp recv: {e}");
                        break;
                    }
                }
            }
        }
        Endpoint::Sctp { sock, v4, ports } => loop {
            let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    // SAFETY: recv_from initialised the first n bytes.
                    let data: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    let payload = if *v4 {
                        match sctp::strip_ipv4(&data) {
                            Some((_, p)) => p,
                            None => continue,
                        }
                    } else {
                        &data[..]
                    };
                    let Some(pkt) = sctp::parse(payload) else {
                        continue;
                    };
                    if pkt.chunk_type != sctp::CHUNK_INIT || !ports.contains(&pkt.dst_port) {
                        continue;
                    }
                    let Some(peer) = from.as_socket() else {
                        continue;
                    };
                    record(arrivals, pkt.initiate_tag, peer.ip());
                    let ack = sctp::init_ack(&pkt, pkt.initiate_tag.rotate_left(13) | 1);
                    let to = SockAddr::from(SocketAddr::new(peer.ip(), 0));
                    if let Err(e) = sock.send_to(&ack, &to) {
                        tracing::debug!(%peer, "sctp init ack: {e}");
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    tracing::debug!("sctp recv: {e}");
                    break;
                }
            }
        },
    }
}

fn run(eps: Vec<Endpoint>, stop: RawFd, arrivals: Arrivals) {
    let mut pfds: Vec<libc::pollfd> = eps
        .iter()
        .map(|e| e.fd())
        .chain(std::iter::once(stop))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: pfds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!("server poll: {e}");
            return;
        }
        if pfds.last().is_some_and(|p| p.revents != 0) {
            return;
        }
        for (ep, p) in eps.iter().zip(&pfds) {
            if p.revents != 0 {
                serve_one(ep, &arrivals);
            }
        }
    }
}

impl Server {
    /// Starts the server thread of namespace `name` (open as `ns`) and waits until every socket is
    /// bound, so probes can start as soon as this returns.
    pub fn start(
        name: &str,
        ns: &File,
        spec: ServerSpec,
        arrivals: Arrivals,
    ) -> Result<Server, LabError> {
        let ns = ns
            .try_clone()
            .map_err(|e| LabError::io("server: dup netns fd", name, e))?;
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(LabError::io(
                "server: eventfd",
                name,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: efd is a fresh descriptor owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(efd) };
        let stop_raw = stop.as_raw_fd();
        let (tx, rx) = mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("lab-srv-{name}"))
            .spawn(move || {
                let eps = netns::enter(ns.as_raw_fd()).and_then(|_| open_endpoints(&spec));
                drop(ns);
                match eps {
                    Ok(eps) => {
                        let _ = tx.send(Ok(()));
                        run(eps, stop_raw, arrivals);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| LabError::io("server: spawn thread", name, e))?;
        let ready = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("server thread died")));
        let mut server = Server {
            netns: name.to_string(),
            stop,
            thread: Some(thread),
        };
        if let Err(e) = ready {
            server.stop();
            return Err(LabError::io("server: open sockets", name, e));
        }
        Ok(server)
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(
                    self.stop.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if t.join().is_err() {
                tracing::warn!(netns = %self.netns, "server thread panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
