//! `portcullis probe`: a real connection attempt from inside a local pod's network namespace (the
//! `nc -zv` from a debug pod, without the debug image), next to what `explain` predicts for it,
//! with the drop events the attempt caused and the policies behind them.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use portcullis_common::DropEvent;
use portcullis_gateway::PinnedGateway;
use portcullis_node::{DropEvents, PinnedNode};
use portcullis_policy::model::{Pod, Protocol, Snapshot};
use portcullis_policy::probe::{ProbeEndpoint, ProbeSpec};
use serde_json::json;

use crate::daemon::PublishedState;
use crate::explain_cmd::print_table;
use crate::status_cmd::{event_addr, event_json, event_line};
use crate::{gateway_cmd, load_reporting, node, probe_target, OutputFormat, SourceArgs};

#[derive(clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Source: `namespace/pod`, a pod running on this node.
    #[arg(long)]
    from: String,
    /// Destination: `namespace/pod`, `namespace/service` (connects to its cluster IP; each pod
    /// behind it is predicted on its target port) or an IP address.
    #[arg(long)]
    to: String,
    /// Destination port.
    #[arg(long)]
    port: u16,
    /// TCP or UDP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// How long to wait for the connection or a reply.
    #[arg(long, default_value_t = 1500)]
    timeout_ms: u64,
    /// bpffs directory of the node hook's pins: its drop events are read during the attempt.
    #[arg(long, default_value = node::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The node hook's published state: it names the policies behind a drop.
    #[arg(long, default_value = node::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// How the attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Observed {
    Connected,
    /// A RST: the SYN reached the destination, nothing listens there.
    Refused,
    Timeout,
    Reply,
    /// ICMP port unreachable: the datagram reached the destination, nothing listens there.
    PortUnreachable,
    NoAnswer,
    /// No route, or ICMP host/network unreachable.
    Unreachable,
}

impl Observed {
    fn name(self) -> &'static str {
        match self {
            Observed::Connected => "connected",
            Observed::Refused => "refused",
            Observed::Timeout => "timeout",
            Observed::Reply => "reply",
            Observed::PortUnreachable => "port-unreachable",
            Observed::NoAnswer => "no-answer",
            Observed::Unreachable => "unreachable",
        }
    }

    /// Whether the packet got to the destination host: what an allow looks like. A UDP service
    /// that never answers looks like a drop.
    fn reached(self) -> bool {
        matches!(
            self,
            Observed::Connected | Observed::Refused | Observed::Reply | Observed::PortUnreachable
        )
    }
}

/// One attempt: how it ended, from which local address, how long it took.
struct Attempt {
    observed: Observed,
    local: SocketAddr,
    elapsed: Duration,
}

/// A daemon's drop-event ring buffer and where it publishes its group names.
struct DropSource {
    events: DropEvents,
    state_dir: PathBuf,
}

pub fn run(args: ProbeArgs) -> Result<ExitCode> {
    let protocol = Protocol::parse(&args.protocol.to_uppercase())
        .filter(|p| matches!(p, Protocol::Tcp | Protocol::Udp))
        .ok_or_else(|| {
            anyhow!(
                "--protocol {:?}: probe makes TCP and UDP attempts",
                args.protocol
            )
        })?;
    let spec = ProbeSpec {
        from: args.from.clone(),
        to: args.to.clone(),
        port: args.port,
        protocol: protocol.to_string(),
        expect: None,
    };
    let probe = spec.to_probe().map_err(|e| anyhow!("probe {spec}: {e}"))?;
    let (snapshot, _) = load_reporting(&args.source)?;
    let source = source_pod(&snapshot, &probe.from)?;
    let target = probe_target::resolve(&snapshot, source, probe)?;
    let remote = target.remote;

    let netns = if source.host_network {
        None
    } else {
        Some(pod_netns_file(source)?)
    };
    let mut sources = drop_sources(&args);
    for s in &mut sources {
        // Events from before the attempt are not its own.
        while s.events.next_event().is_some() {}
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let attempt = match &netns {
        Some(file) => portcullis_lab::netns::run_in(file.as_raw_fd(), || {
            try_connect(protocol, remote, timeout)
        })
        .context("entering the pod's network namespace")?,
        None => try_connect(protocol, remote, timeout),
    }
    .with_context(|| format!("{protocol} attempt to {remote}"))?;
    let drops = if attempt.observed.reached() {
        Vec::new()
    } else {
        drops_of(&mut sources, &attempt, &target.judged, protocol)
    };

    let predicted = target.predicted.name();
    let agree = target.predicted.agrees(attempt.observed.reached());
    let detail = format!(
        "{} -> {remote} in {} ms; explain: {}",
        attempt.local,
        attempt.elapsed.as_millis(),
        target.reason
    );
    let port = format!("{protocol}/{}", args.port);
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            json!({
                "from": args.from, "to": args.to, "port": args.port, "protocol": protocol.to_string(),
                "predicted": predicted, "observed": attempt.observed.name(), "agree": agree,
                "detail": detail, "service": target.service,
                "drops": drops.iter().map(|(e, p)| event_json(e, p)).collect::<Vec<_>>(),
            })
        ),
        OutputFormat::Table => {
            print_table(
                &[
                    "FROM",
                    "TO",
                    "PORT",
                    "PREDICTED",
                    "OBSERVED",
                    "AGREE",
                    "DETAIL",
                ],
                &[[
                    args.from.clone(),
                    args.to.clone(),
                    port,
                    predicted.to_string(),
                    attempt.observed.name().to_string(),
                    if agree { "yes" } else { "NO" }.to_string(),
                    detail,
                ]],
            );
            for (event, policies) in &drops {
                println!("  {}", event_line(event, policies));
            }
        }
    }
    Ok(if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The source pod: it must be a pod of the snapshot.
fn source_pod<'a>(snapshot: &'a Snapshot, from: &ProbeEndpoint) -> Result<&'a Pod> {
    let ProbeEndpoint::Pod { namespace, name } = from else {
        bail!("--from {from}: the source must be a pod (namespace/pod) running on this node");
    };
    snapshot
        .pods
        .iter()
        .find(|p| &p.namespace == namespace && &p.name == name)
        .ok_or_else(|| anyhow!("no pod {from} in the cluster state"))
}

/// The source pod's network namespace on this node, opened.
fn pod_netns_file(pod: &Pod) -> Result<std::fs::File> {
    let Some((path, _)) = node::discover::pod_netns(&pod.ips)? else {
        let ips: Vec<String> = pod.ips.iter().map(IpAddr::to_string).collect();
        let placed = match &pod.node {
            Some(node) => format!("the cluster state places it on node {node}"),
            None => "the cluster state names no node for it".to_string(),
        };
        bail!(
            "{} ({}) is not a pod of this node: no network namespace here holds its address \
             behind a veth of this namespace; {placed}",
            pod.key(),
            ips.join(", ")
        );
    };
    std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// The drop-event ring buffers of this node: the node hook's, and the gateway's when one is
/// pinned here. Without them the attempt is still made, only its drops go unexplained.
fn drop_sources(args: &ProbeArgs) -> Vec<DropSource> {
    let mut sources = Vec::new();
    match PinnedNode::open(&args.pin_dir).and_then(|p| p.drop_events()) {
        Ok(events) => sources.push(DropSource {
            events,
            state_dir: args.state_dir.clone(),
        }),
        Err(e) => eprintln!(
            "note: no node hook pinned at {} ({e}): drop events are not shown",
            args.pin_dir.display()
        ),
    }
    let gateway = Path::new(gateway_cmd::DEFAULT_PIN_DIR);
    if gateway.exists() {
        match PinnedGateway::open(gateway).and_then(|p| p.drop_events()) {
            Ok(events) => sources.push(DropSource {
                events,
                state_dir: gateway_cmd::DEFAULT_STATE_DIR.into(),
            }),
            Err(e) => eprintln!("note: gateway drop events at {}: {e}", gateway.display()),
        }
    }
    sources
}

/// The drop events of the attempt's 5-tuple (either way round), to any of the destinations
/// judged (a service's backends after translation), with the policies of their group as the
/// daemon published them.
fn drops_of(
    sources: &mut [DropSource],
    attempt: &Attempt,
    judged: &[SocketAddr],
    protocol: Protocol,
) -> Vec<(DropEvent, Vec<String>)> {
    let number = match protocol {
        Protocol::Udp => libc::IPPROTO_UDP,
        _ => libc::IPPROTO_TCP,
    } as u8;
    let local = (attempt.local.ip(), attempt.local.port());
    let ours = |a: (IpAddr, u16), b: (IpAddr, u16)| {
        a == local && judged.iter().any(|r| (r.ip(), r.port()) == b)
    };
    let mut drops = Vec::new();
    for source in sources {
        let groups = PublishedState::read(&source.state_dir)
            .unwrap_or_default()
            .groups;
        while let Some(event) = source.events.next_event() {
            let src = (event_addr(event.src), event.src_port);
            let dst = (event_addr(event.dst), event.dst_port);
            if event.protocol == number && (ours(src, dst) || ours(dst, src)) {
                let policies = groups.get(&event.group).cloned().unwrap_or_default();
                drops.push((event, policies));
            }
        }
    }
    drops
}

fn try_connect(protocol: Protocol, remote: SocketAddr, timeout: Duration) -> io::Result<Attempt> {
    let started = Instant::now();
    let (observed, local) = match protocol {
        Protocol::Udp => udp(remote, timeout)?,
        _ => tcp(remote, timeout)?,
    };
    Ok(Attempt {
        observed,
        local,
        elapsed: started.elapsed(),
    })
}

/// How a socket error ends the attempt; errors that say nothing about the path are returned.
fn outcome(e: io::Error, protocol: Protocol) -> io::Result<Observed> {
    let udp = protocol == Protocol::Udp;
    Ok(match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock if udp => Observed::NoAnswer,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Observed::Timeout,
        ErrorKind::ConnectionRefused if udp => Observed::PortUnreachable,
        ErrorKind::ConnectionRefused => Observed::Refused,
        _ if matches!(
            e.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH)
        ) =>
        {
            Observed::Unreachable
        }
        _ => return Err(e),
    })
}

/// A non-blocking connect made by hand: unlike `TcpStream::connect_timeout`, it leaves the
/// socket (and so the local port of the 5-tuple) to look at when the attempt fails.
fn tcp(remote: SocketAddr, timeout: Duration) -> io::Result<(Observed, SocketAddr)> {
    let family = if remote.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the descriptor is owned by `stream` right away.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (addr, len) = sockaddr(remote);
    // SAFETY: `addr` holds a socket address of `len` bytes.
    if unsafe { libc::connect(fd, (&raw const addr).cast(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Ok((outcome(e, Protocol::Tcp)?, stream.local_addr()?));
        }
    }
    let local = stream.local_addr()?;
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    let observed = match (ready, stream.take_error()?) {
        (0, _) => Observed::Timeout,
        (_, None) => Observed::Connected,
        (_, Some(e)) => outcome(e, Protocol::Tcp)?,
    };
    Ok((observed, local))
}

/// Sends one datagram and waits for any reply.
fn udp(remote: SocketAddr, timeout: Duration) -> io::Result<(Observed, SocketAddr)> {
    let any: IpAddr = if remote.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket.connect(remote)?;
    socket.set_read_timeout(Some(timeout))?;
    let local = socket.local_addr()?;
    let answer = socket
        .send(b"portcullis probe\n")
        .and_then(|_| socket.recv(&mut [0u8; 2048]));
    let observed = match answer {
        Ok(_) => Observed::Reply,
        Err(e) => outcome(e, Protocol::Udp)?,
    };
    Ok((observed, local))
}

/// `addr` as a `sockaddr_in`/`sockaddr_in6` for connect(2), and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is big enough and aligned for any socket address.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
