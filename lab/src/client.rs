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

/// One attempt: how it ended and the source address the server saw, if the probe reached it.
pub(crate) struct Attempt {
    pub outcome: Outcome,
    pub source_seen: Option<IpAddr>,
}

/// The start of a UDP probe's payload; the token follows as 8 hex digits.
const UDP_TOKEN_PREFIX: &str = "portcullis-lab probe ";

fn udp_token(token: u32) -> String {
    format!("{UDP_TOKEN_PREFIX}{token:08x}")
}

/// The token of a UDP probe's payload.
pub(crate) fn udp_token_of(payload: &[u8]) -> Option<u32> {
    let hex = payload.strip_prefix(UDP_TOKEN_PREFIX.as_bytes())?;
    u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Takes what a server recorded for `token`.
fn take_seen(arrivals: &Arrivals, token: u32) -> Option<IpAddr> {
    arrivals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&token)
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
) -> Attempt {
    let token = unique();
    let r = match protocol {
        Protocol::Tcp => tcp(src, dst, timeout),
        Protocol::Udp => udp(src, dst, timeout, token).map(|o| (o, None)),
        Protocol::Sctp => sctp_probe(src, dst, timeout, token, arrivals).map(|o| (o, None)),
    };
    let (outcome, in_band) = r.unwrap_or_else(|e| {
        (
            Outcome::Final(Verdict::Deny, format!("local error: {e}")),
            None,
        )
    });
    Attempt {
        outcome,
        // TCP's answer carries it; UDP's and SCTP's server recorded it under the token.
        source_seen: in_band.or_else(|| take_seen(arrivals, token)),
    }
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

/// The outcome and the source the server said it saw.
fn tcp(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<(Outcome, Option<IpAddr>)> {
    let sock = Socket::new(
        Domain::for_address(dst),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    match sock.connect_timeout(&dst.into(), timeout) {
        Ok(()) => {}
        Err(e) if is_timeout(&e) => return Ok((Outcome::Timeout("timeout".into()), None)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            // A RST came back: the SYN reached the destination host.
            return Ok((Outcome::Final(Verdict::Allow, "refused".into()), None));
        }
        Err(e) if unreachable(&e) => {
            let o = Outcome::Final(Verdict::Deny, format!("unreachable: {e}"));
            return Ok((o, None));
        }
        Err(e) => return Ok((Outcome::Final(Verdict::Deny, format!("connect: {e}")), None)),
    }
    sock.set_read_timeout(Some(timeout))?;
    let mut stream: std::net::TcpStream = sock.into();
    // "P" and the source address seen, up to a newline.
    let mut answer = Vec::new();
    let mut buf = [0u8; 64];
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.contains(&b'\n') || answer.len() > 64 {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    let seen = answer
        .strip_prefix(b"P")
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|rest| rest.trim_end().parse().ok());
    let outcome = match (answer.first(), ended) {
        (Some(_), _) => Outcome::Final(Verdict::Allow, "connected".into()),
        (None, Ok(())) => Outcome::Final(Verdict::Deny, "connected, closed before data".into()),
        (None, Err(e)) if is_timeout(&e) => Outcome::Timeout("connected, no data came back".into()),
        (None, Err(e)) => Outcome::Final(Verdict::Deny, format!("connected, then {e}")),
    };
    Ok((outcome, seen))
}

fn udp(src: IpAddr, dst: SocketAddr, timeout: Duration, token: u32) -> io::Result<Outcome> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.connect(dst)?;
    let token = udp_token(token);
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
    tag: u32,
    arrivals: &Arrivals,
) -> io::Result<Outcome> {
    let sock = raw_sctp(src)?;
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
        .contains_key(&tag);
    Ok(Outcome::Timeout(if arrived {
        "init arrived, no init ack came back".into()
    } else {
        "timeout".into()
    }))
}
