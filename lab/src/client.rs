//! The source side of a probe, run on a thread that has entered the source namespace.

use std::io::{self, ErrorKind, Read};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portcullis_policy::model::Protocol;
use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};

use crate::server::{raw_sctp, Arrivals};
use crate::{sctp, Verdict};

/// How one attempt ended: a final answer, or a timeout that is worth one more try.
pub(crate) enum Outcome {
    Final(Verdict, String),
    Timeout(String),
}

/// A number unique within this process (and likely across processes), never 0.
pub(crate) fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let seed = std::process::id().wrapping_mul(0x9E37_79B9);
    let mut x = n.wrapping_add(seed) ^ 0x5bd1_e995;
    // xorshift-multiply finaliser: spreads consecutive numbers over the whole range.
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x.max(1)
}

pub(crate) fn attempt(
    protocol: Protocol,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
    arrivals: &Arrivals,
) -> Outcome {
    let r = match protocol {
        Protocol::Tcp => tcp(src, dst, timeout),
        Protocol::Udp => udp(src, dst, timeout),
        Protocol::Sctp => sctp_probe(src, dst, timeout, arrivals),
    };
    r.unwrap_or_else(|e| Outcome::Final(Verdict::Deny, format!("local error: {e}")))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPERM)
    )
}

fn tcp(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<Outcome> {
    let sock = Socket::new(
        Domain::for_address(dst),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    match sock.connect_timeout(&dst.into(), timeout) {
        Ok(()) => {}
        Err(e) if is_timeout(&e) => return Ok(Outcome::Timeout("timeout".into())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            // A RST came back: the SYN reached the destination host.
            return Ok(Outcome::Final(Verdict::Allow, "refused".into()));
        }
        Err(e) if unreachable(&e) => {
            return Ok(Outcome::Final(Verdict::Deny, format!("unreachable: {e}")))
        }
        Err(e) => return Ok(Outcome::Final(Verdict::Deny, format!("connect: {e}"))),
    }
    sock.set_read_timeout(Some(timeout))?;
    let mut stream: std::net::TcpStream = sock.into();
    let mut b = [0u8; 1];
    Ok(match stream.read(&mut b) {
        Ok(1) => Outcome::Final(Verdict::Allow, "connected".into()),
        Ok(_) => Outcome::Final(Verdict::Deny, "connected, closed before data".into()),
        Err(e) if is_timeout(&e) => Outcome::Timeout("connected, no data came back".into()),
        Err(e) => Outcome::Final(Verdict::Deny, format!("connected, then {e}")),
    })
}

fn udp(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<Outcome> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.connect(dst)?;
    let token = format!("portcullis-lab probe {:08x}", unique());
    match sock.send(token.as_bytes()) {
        Ok(_) => {}
        Err(e) if unreachable(&e) => {
            return Ok(Outcome::Final(Verdict::Deny, format!("unreachable: {e}")))
        }
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::Timeout("timeout".into()));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == token.as_bytes() => {
                return Ok(Outcome::Final(Verdict::Allow, "reply received".into()))
            }
            Ok(_) => continue,
            Err(e) if is_timeout(&e) => return Ok(Outcome::Timeout("timeout".into())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return Ok(Outcome::Final(
                    Verdict::Deny,
                    "port unreachable (ICMP) came back".into(),
                ))
            }
            Err(e) if unreachable(&e) => {
                return Ok(Outcome::Final(Verdict::Deny, format!("unreachable: {e}")))
            }
            Err(e) => return Err(e),
        }
    }
}

fn sctp_probe(
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
    arrivals: &Arrivals,
) -> io::Result<Outcome> {
    let sock = raw_sctp(src)?;
    let tag = unique();
    let sport = 20000 + (unique() % 40000) as u16;
    let init = sctp::init(sport, dst.port(), tag);
    match sock.send_to(&init, &SockAddr::from(SocketAddr::new(dst.ip(), 0))) {
        Ok(_) => {}
        Err(e) if unreachable(&e) => {
            return Ok(Outcome::Final(Verdict::Deny, format!("unreachable: {e}")))
        }
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if from.as_socket().map(|a| a.ip()) != Some(dst.ip()) {
                    continue;
                }
                // SAFETY: recv_from initialised the first n bytes.
                let data: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                let payload = if src.is_ipv4() {
                    match sctp::strip_ipv4(&data) {
                        Some((_, p)) => p,
                        None => continue,
                    }
                } else {
                    &data[..]
                };
                if let Some(p) = sctp::parse(payload) {
                    if p.chunk_type == sctp::CHUNK_INIT_ACK
                        && p.vtag == tag
                        && p.src_port == dst.port()
                        && p.dst_port == sport
                    {
                        return Ok(Outcome::Final(Verdict::Allow, "init ack received".into()));
                    }
                }
            }
            Err(e) if is_timeout(&e) => break,
            Err(e) if unreachable(&e) => {
                return Ok(Outcome::Final(Verdict::Deny, format!("unreachable: {e}")))
            }
            Err(e) => return Err(e),
        }
    }
    let arrived = arrivals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&tag);
    Ok(Outcome::Timeout(if arrived {
        "init arrived, no init ack came back".into()
    } else {
        "timeout".into()
    }))
}
