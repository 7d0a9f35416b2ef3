//! One queue's AF_XDP sockets on veth pairs in throw-away namespaces: frames from a peer
//! namespace arrive on the cluster leg, are rewritten in place and leave by the external leg;
//! a 2-queue veth opens a QueueRings per queue; bad set-ups give the SetupError naming the
//! interface. Traffic stays between the namespaces made here.

use std::io::Read;
use std::net::UdpSocket;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis_afxdp::rings::{Action, Leg, QueueRings, RingConfig, ZeroCopy};
use portcullis_afxdp::setup::{rx_queue_count, SetupError};
use portcullis_testkit::{ifindex, require_root, sh, NetNs};

const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0];
const PORT: u16 = 9999;

/// The gateway's XDP program stand-in: an XSKMAP and a 5-instruction program redirecting every
/// frame to the socket of its rx queue, attached by a BPF link (detached when dropped). Raw
/// bpf(2), since a test cannot build a BPF object here, and libxdp's embedded default program
/// crashes in the vendored libbpf's BTF.ext parser.
struct XskRedirect {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> OwnedFd {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    // SAFETY: the kernel returned a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn put(attr: &mut [u8; 128], off: usize, bytes: &[u8]) {
    attr[off..off + bytes.len()].copy_from_slice(bytes);
}

impl XskRedirect {
    fn attach(iface: &str) -> XskRedirect {
        use std::os::fd::AsRawFd;
        let mut attr = [0u8; 128];
        // BPF_MAP_CREATE: BPF_MAP_TYPE_XSKMAP, u32 keys and values, 64 queues.
        for (off, v) in [(0, 17u32), (4, 4), (8, 4), (12, 64)] {
            put(&mut attr, off, &v.to_ne_bytes());
        }
        let map = bpf(0, &mut attr);
        let insn = |code: u8, regs: u8, off: i16, imm: i32| {
            let mut b = vec![code, regs];
            b.extend_from_slice(&off.to_ne_bytes());
            b.extend_from_slice(&imm.to_ne_bytes());
            b
        };
        let insns: Vec<u8> = [
            insn(0x61, 0x12, 16, 0),              // r2 = ctx->rx_queue_index
            insn(0x18, 0x11, 0, map.as_raw_fd()), // r1 = map (BPF_PSEUDO_MAP_FD)
            insn(0, 0, 0, 0),
            insn(0xb7, 0x03, 0, 2), // r3 = XDP_PASS when the queue has no socket
            insn(0x85, 0, 0, 51),   // call bpf_redirect_map
            insn(0x95, 0, 0, 0),    // exit
        ]
        .concat();
        let license = c"GPL";
        let mut attr = [0u8; 128];
        // BPF_PROG_LOAD: BPF_PROG_TYPE_XDP, expected_attach_type BPF_XDP.
        put(&mut attr, 0, &6u32.to_ne_bytes());
        put(&mut attr, 4, &((insns.len() / 8) as u32).to_ne_bytes());
        put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 68, &37u32.to_ne_bytes());
        let prog = bpf(5, &mut attr);
        let mut attr = [0u8; 128];
        // BPF_LINK_CREATE: prog, ifindex, BPF_XDP.
        put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 4, &ifindex(iface).to_ne_bytes());
        put(&mut attr, 8, &37u32.to_ne_bytes());
        let link = bpf(28, &mut attr);
        XskRedirect {
            map,
            _prog: prog,
            _link: link,
        }
    }

    fn insert(&self, queue: u32, socket: std::os::fd::BorrowedFd<'_>) {
        use std::os::fd::AsRawFd;
        let value = socket.as_raw_fd() as u32;
        let mut attr = [0u8; 128];
        // BPF_MAP_UPDATE_ELEM: map, &key, &value.
        put(&mut attr, 0, &(self.map.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 8, &(&queue as *const u32 as u64).to_ne_bytes());
        put(&mut attr, 16, &(&value as *const u32 as u64).to_ne_bytes());
        // SAFETY: as in `bpf`; the key and value it points at are alive for the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 2, attr.as_mut_ptr(), attr.len()) };
        assert_eq!(rc, 0, "XSKMAP update: {}", std::io::Error::last_os_error());
    }
}

/// An AF_PACKET socket seeing every frame that arrives on `iface` (of the calling thread's
/// namespace), with a short read timeout.
fn packet_socket(iface: &str) -> socket2::Socket {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex(iface) as i32;
    use std::os::fd::AsRawFd;
    // SAFETY: `sll` is a valid sockaddr_ll of the length given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let sock = socket2::Socket::from(fd);
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock.set_recv_buffer_size(8 << 20).unwrap();
    sock
}

fn is_test_udp(frame: &[u8]) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 17
        && frame[36..38] == PORT.to_be_bytes()
}

/// src (a0) ⇄ (c0) gw (e0) ⇄ (b0) dst: c0 is the cluster leg, e0 the external leg.
struct Lab {
    src: NetNs,
    gw: NetNs,
    dst: NetNs,
}

fn lab() -> Lab {
    let (src, gw, dst) = (
        NetNs::new("pcx-src"),
        NetNs::new("pcx-gw"),
        NetNs::new("pcx-dst"),
    );
    gw.run(|| {
        sh(&format!(
            "ip link add c0 type veth peer name a0 netns {}",
            src.name
        ));
        sh(&format!(
            "ip link add e0 type veth peer name b0 netns {}",
            dst.name
        ));
        sh("ip link set c0 up && ip link set e0 up");
    });
    src.run(|| {
        sh("ip link set a0 up && ip addr add 10.77.0.1/24 dev a0");
        sh("ip neigh add 10.77.0.2 lladdr 02:00:00:00:0c:00 dev a0 nud permanent");
    });
    dst.run(|| sh("ip link set b0 address 02:00:00:00:0b:00 && ip link set b0 up"));
    Lab { src, gw, dst }
}

/// Sends `count` UDP datagrams to the sink port, each carrying `tag` and its number.
fn send(src: &NetNs, tag: &str, count: u32) {
    src.run(|| {
        let sock = UdpSocket::bind("10.77.0.1:0").unwrap();
        for i in 0..count {
            sock.send_to(format!("{tag}-{i}").as_bytes(), ("10.77.0.2", PORT))
                .unwrap();
        }
    });
}

/// Counts frames with `tag` arriving on the sink until `count` arrived or nothing came for a
/// while; returns them and the time from the first to the last.
fn sink(sock: &socket2::Socket, tag: &str, count: u32) -> (u32, Duration, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    let (mut seen, mut first, mut last, mut sample) = (0, None, Instant::now(), Vec::new());
    while seen < count {
        let Ok(n) = (&*sock).read(&mut buf) else {
            break;
        };
        let frame = &buf[..n];
        if is_test_udp(frame) && frame[42..].starts_with(tag.as_bytes()) {
            seen += 1;
            last = Instant::now();
            first.get_or_insert(last);
            if sample.is_empty() {
                sample = frame.to_vec();
            }
        }
    }
    (seen, first.map_or(Duration::ZERO, |f| last - f), sample)
}

#[test]
#[ignore = "needs root"]
fn frames_from_the_cluster_leg_leave_by_the_external_leg_rewritten_in_place() {
    require_root();
    let lab = lab();
    let stop = AtomicBool::new(false);
    let sink_sock = lab.dst.run(|| packet_socket("b0"));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stats = std::thread::scope(|s| {
        // A failed assertion below must still stop the engine thread, or the scope waits for it
        // forever.
        let _stop_engine = StopOnDrop(&stop);
        let engine = s.spawn(|| {
            lab.gw.run(|| {
                let redirect = XskRedirect::attach("c0");
                let mut rings = QueueRings::open("c0", "e0", 0, &RingConfig::default()).unwrap();
                redirect.insert(0, rings.fds()[0]);
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    rings
                        .poll(10, |leg, frame| {
                            if leg != Leg::Cluster || !is_test_udp(frame) {
                                return Action::Drop;
                            }
                            frame[..6].copy_from_slice(&SINK_MAC);
                            Action::Transmit
                        })
                        .unwrap();
                }
                rings.stats()
            })
        });
        ready_rx.recv().unwrap();

        send(&lab.src, "pcx-first", 200);
        let (seen, _, sample) = sink(&sink_sock, "pcx-first", 200);
        assert_eq!(seen, 200, "every datagram crosses the gateway");
        assert_eq!(
            sample[..6],
            SINK_MAC,
            "the handler's in-place rewrite goes out"
        );
        assert!(sample[42..].starts_with(b"pcx-first-"), "payload unchanged");

        // Throughput, bounded by one UDP sender and one AF_PACKET reader on these 2 cores.
        const BURST: u32 = 100_000;
        let burst = BURST;
        let (start, sender) = (
            Instant::now(),
            s.spawn(|| send(&lab.src, "pcx-rate", BURST)),
        );
        let (seen, span, _) = sink(&sink_sock, "pcx-rate", burst);
        sender.join().unwrap();
        let secs = span.as_secs_f64().max(1e-9);
        eprintln!(
            "rings: {seen}/{burst} frames forwarded, {:.0} frames/s over {:.3} s (sender took {:.3} s)",
            f64::from(seen) / secs,
            secs,
            start.elapsed().as_secs_f64()
        );
        // How many survive a flood on 2 shared cores is the sink's and the load's (measured in
        // perf/, not asserted); that the burst crosses is.
        assert!(seen > 0, "a burst crosses the gateway: {seen}/{burst}");

        stop.store(true, Ordering::Relaxed);
        engine.join().unwrap()
    });
    eprintln!("{}", serde_json::to_string(&stats).unwrap());
    assert!(stats.cluster.received >= 200 && stats.external.transmitted >= 200);
    assert_eq!(
        stats.external.received, 0,
        "nothing arrives on the external leg"
    );
    assert!(
        !stats.cluster.zero_copy && !stats.external.zero_copy,
        "veth is copy mode"
    );
}

/// Sets the flag when dropped (also when a test panics).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A namespace with two veth pairs, x0–y0 and z0–w0, of `queues` rx and tx queues per end.
fn veth_ns(tag: &str, queues: u32) -> NetNs {
    let ns = NetNs::new(tag);
    let q = format!("numrxqueues {queues} numtxqueues {queues}");
    ns.run(|| {
        for (a, b) in [("x0", "y0"), ("z0", "w0")] {
            sh(&format!("ip link add {a} {q} type veth peer name {b} {q}"));
            sh(&format!("ip link set {a} up && ip link set {b} up"));
        }
    });
    ns
}

#[test]
#[ignore = "needs root"]
fn a_two_queue_veth_opens_one_queue_rings_per_queue() {
    require_root();
    let ns = veth_ns("pcx-mq", 2);
    ns.run(|| {
        assert_eq!(rx_queue_count("x0").unwrap(), 2);
        let cfg = RingConfig::default();
        let q0 = QueueRings::open("x0", "z0", 0, &cfg).unwrap();
        let q1 = QueueRings::open("x0", "z0", 1, &cfg).unwrap();
        let fds: Vec<i32> = [q0.fds(), q1.fds()]
            .iter()
            .flatten()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let mut unique = fds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4, "four sockets: {fds:?}");
        let err = QueueRings::open("x0", "z0", 2, &cfg).err().unwrap();
        assert!(matches!(err, SetupError::QueueOutOfRange { ref iface, queue: 2, available: 2 } if iface == "x0"), "{err}");
    });
}

#[test]
#[ignore = "needs root"]
fn bad_set_ups_give_one_error_naming_the_interface() {
    require_root();
    let ns = veth_ns("pcx-err", 1);
    ns.run(|| {
        let cfg = RingConfig::default();
        let err = QueueRings::open("pcx-nope0", "x0", 0, &cfg).err().unwrap();
        assert!(matches!(err, SetupError::NoSuchInterface { ref iface } if iface == "pcx-nope0"));
        assert!(err.to_string().contains("pcx-nope0"), "{err}");

        let err = QueueRings::open("x0", "y0", 5, &cfg).err().unwrap();
        assert!(matches!(err, SetupError::QueueOutOfRange { ref iface, queue: 5, available: 1 } if iface == "x0"), "{err}");
        assert!(err.to_string().contains("x0"), "{err}");

        let forced = RingConfig {
            zero_copy: ZeroCopy::Force,
            ..RingConfig::default()
        };
        let err = QueueRings::open("x0", "y0", 0, &forced).err().unwrap();
        assert!(matches!(err, SetupError::ZeroCopyUnavailable { ref iface, queue: 0 } if iface == "x0"), "{err}");

        let held = QueueRings::open("x0", "y0", 0, &cfg).unwrap();
        let err = QueueRings::open("x0", "y0", 0, &cfg).err().unwrap();
        assert!(matches!(err, SetupError::SocketBusy { ref iface, queue: 0 } if iface == "x0"), "{err}");
        // z0 binds, then y0 is busy: the z0 socket must not stay behind.
        let err = QueueRings::open("z0", "y0", 0, &cfg).err().unwrap();
        assert!(matches!(err, SetupError::SocketBusy { ref iface, queue: 0 } if iface == "y0"), "{err}");
        QueueRings::open("z0", "w0", 0, &cfg).expect("z0 was released");
        drop(held);
        QueueRings::open("x0", "y0", 0, &cfg).expect("x0 and y0 are free again");
    });
}

#[test]
#[ignore = "needs root"]
fn a_umem_over_the_memlock_limit_says_how_much_and_how_to_raise_it() {
    require_root();
    let ns = veth_ns("pcx-mem", 1);
    ns.run(|| {
        drop_ipc_lock_of_this_thread();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) },
            0
        );
        let frames = (limit.rlim_cur / 2048 + 1024).next_power_of_two() as u32;
        let cfg = RingConfig {
            frame_count: frames,
            ..RingConfig::default()
        };
        let err = QueueRings::open("x0", "y0", 0, &cfg).err().unwrap();
        let bytes = u64::from(frames) * 2048;
        assert!(
            matches!(err, SetupError::LockedMemory { bytes: b, .. } if b == bytes),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("x0") && msg.contains(&bytes.to_string()) && msg.contains("CAP_IPC_LOCK"),
            "{msg}"
        );
    });
}

/// Clears CAP_IPC_LOCK from the calling thread's effective set (capabilities are per thread),
/// so the kernel charges a UMEM to RLIMIT_MEMLOCK.
fn drop_ipc_lock_of_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_IPC_LOCK: u32 = 14;
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset read and write the header and two data structs of version 3.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_IPC_LOCK);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}
