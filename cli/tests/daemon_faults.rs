//! Command-line faults of `portcullis gateway` and `portcullis node`: an unknown interface, bpffs
//! not mounted (a private mount namespace without it) or a pin directory elsewhere, no root
//! (uid 0 without capabilities, and `nobody`), a second daemon on the same pins or the same
//! interfaces, and manifests that cannot be read once the programs are attached. Each is exit
//! status 2 with one line on stderr saying what is wrong and how to fix it, and leaves nothing
//! behind: no XDP program on the interfaces (`ip -d link`, `bpftool net`), no new pins, and a
//! daemon already running keeps its program and pins. And pins removed under a running daemon
//! (`rm -rf` of the pin directory, one map or link unlinked): it pins them again within its
//! check interval and says so, so that a kill -9 afterwards still leaves the program enforcing.

#[path = "support/dirs.rs"]
mod dirs;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dirs::DaemonDirs;
use portcullis_testkit::{require_root, sh, NetNs};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Runs the command as uid 0 without any capability.
const NO_CAPS: [&str; 5] = [
    "setpriv",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--",
];
/// Runs the command in a private mount namespace where /sys/fs/bpf is plain sysfs.
const NO_BPFFS: [&str; 5] = [
    "unshare",
    "-m",
    "sh",
    "-c",
    "umount -l /sys/fs/bpf && exec \"$0\" \"$@\"",
];

/// A network namespace with the gateway's two legs (`gc`, `ge`, veths up) and a daemon's dirs.
struct Setup {
    ns: NetNs,
    dirs: DaemonDirs,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let ns = NetNs::new(tag);
        ns.run(|| {
            sh("ip link add gc type veth peer name gcp && ip link add ge type veth peer name gep && \
                for i in gc gcp ge gep; do ip link set $i up; done")
        });
        let dirs = DaemonDirs::new(tag);
        std::fs::write(
            dirs.manifests.join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
        )
        .unwrap();
        Setup { ns, dirs }
    }

    /// `portcullis gateway` on the legs with these dirs (`pin_dir` instead of the own one if
    /// given), the command wrapped in `wrap` (e.g. `setpriv ...`), run to its end.
    /// `legs`: the cluster and external interfaces, then any further arguments.
    fn gateway<const N: usize>(
        &self,
        wrap: &[&str],
        legs: [&str; N],
        pin_dir: Option<&Path>,
    ) -> Output {
        let pin_dir = pin_dir.unwrap_or(&self.dirs.pin_dir);
        let mut args: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                BIN,
                "gateway",
                "--cluster-iface",
                legs[0],
                "--external-iface",
                legs[1],
            ]
            .map(String::from),
        );
        args.extend(legs[2..].iter().map(|s| s.to_string()));
        args.extend(["--pin-dir".into(), pin_dir.display().to_string()]);
        self.run(args)
    }

    /// `portcullis node` with these dirs, wrapped as [`Setup::gateway`].
    fn node(&self, wrap: &[&str], extra: &[&str]) -> Output {
        let mut args: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        args.extend([BIN, "node"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--pin-dir".into(), self.dirs.pin_dir.display().to_string()]);
        self.run(args)
    }

    fn run(&self, args: Vec<String>) -> Output {
        let manifests = self.dirs.manifests.display().to_string();
        let state = self.dirs.state_dir.join("second").display().to_string();
        let mut child = self.ns.run(|| {
            Command::new(&args[0])
                .args(&args[1..])
                .args(["--manifests", &manifests, "--state-dir", &state])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("runs")
        });
        // A start that should fail but runs on is killed, not waited for forever.
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{args:?} still running after 30 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// A daemon (`gateway ...`, `node ...`) left running on these pins, once it enforces; its
    /// stderr goes to `log` in the state directory.
    fn running(&self, args: &[&str]) -> Daemon {
        let mut cmd = self.dirs.daemon(args);
        let log = std::fs::File::create(self.log()).unwrap();
        cmd.stderr(log);
        let mut daemon = Daemon(self.ns.run(|| cmd.spawn().expect("spawn the daemon")));
        let state = self.dirs.state_dir.join("state.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let applied = || {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            value["applied_unix_ms"].as_u64().unwrap_or(0) > 0
        };
        while !applied() {
            assert!(
                daemon.0.try_wait().unwrap().is_none(),
                "{args:?} exited early"
            );
            assert!(
                Instant::now() < deadline,
                "{args:?} did not apply within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn log(&self) -> std::path::PathBuf {
        self.dirs.state_dir.join("log")
    }

    /// What the running daemon published in `key` of its state.
    fn published(&self, key: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.dirs.state_dir.join("state.json")).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        value[key].clone()
    }

    /// Removes `names` from the pin directory (all of it with `None`), then waits until the
    /// daemon has pinned everything again; how long that took.
    fn remove_pins(&self, names: Option<&[&str]>) -> Duration {
        let before = pins(&self.dirs.pin_dir);
        match names {
            None => std::fs::remove_dir_all(&self.dirs.pin_dir).unwrap(),
            Some(names) => {
                for n in names {
                    std::fs::remove_file(self.dirs.pin_dir.join(n)).unwrap();
                }
            }
        }
        let removed = Instant::now();
        while pins(&self.dirs.pin_dir) != before {
            assert!(
                removed.elapsed() < Duration::from_secs(10),
                "not pinned again within 10 s: {:?}",
                pins(&self.dirs.pin_dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        removed.elapsed()
    }

    /// A gateway started over the pins of one that was killed adopts them and runs.
    fn restart_gateway(&self) {
        let mut again = self.running_gateway();
        assert!(again.running(), "the restarted gateway exited");
    }

    fn running_gateway(&self) -> Daemon {
        self.running(&["gateway", "--cluster-iface", "gc", "--external-iface", "ge"])
    }

    /// XDP programs on the legs and everything `bpftool net` lists in the namespace.
    fn attached(&self) -> String {
        self.ns.run(|| {
            let links = sh("ip -d link show gc; ip -d link show ge");
            let xdp: Vec<&str> = links.lines().filter(|l| l.contains("xdp")).collect();
            format!(
                "{}{}",
                xdp.join("\n"),
                sh("bpftool net show | grep -v '^$' | grep -v ':$' || true")
            )
        })
    }
}

/// A daemon a test started: killed with -9 when dropped (also when the test fails).
struct Daemon(Child);

impl Daemon {
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pins(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Exit status 2 and one line on stderr containing every one of `wanted` (besides the info log
/// of what a start that failed late had done: no warning, no other error); the line.
#[track_caller]
fn refused(out: &Output, wanted: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    for w in wanted {
        assert!(lines[0].contains(w), "{w:?} not in: {}", lines[0]);
    }
    eprintln!("  {}", lines[0]);
    lines[0].to_string()
}

#[test]
#[ignore = "needs root (BPF, network and mount namespaces): scripts/test runs it with --include-ignored"]
fn a_gateway_that_cannot_start_says_why_in_one_line_and_leaves_nothing() {
    require_root();
    let s = Setup::new("fault");
    let fresh = &s.dirs.pin_dir;
    let nothing_left = |what: &str| {
        assert_eq!(s.attached(), "", "{what}: something stayed attached");
        assert!(
            !fresh.exists(),
            "{what}: pins left in {}: {:?}",
            fresh.display(),
            pins(fresh)
        );
    };

    refused(
        &s.gateway(&[], ["nosuch0", "ge"], None),
        &["--cluster-iface nosuch0", "ip link"],
    );
    nothing_left("unknown interface");

    // bpffs not mounted: a private mount namespace where /sys/fs/bpf is plain sysfs.
    let out = s.gateway(&NO_BPFFS, ["gc", "ge"], None);
    refused(
        &out,
        &["not on a bpf filesystem", "mount -t bpf bpf /sys/fs/bpf"],
    );
    nothing_left("bpffs not mounted");
    let elsewhere = std::env::temp_dir().join(format!("pcltest-{}-notbpffs", std::process::id()));
    refused(
        &s.gateway(&[], ["gc", "ge"], Some(&elsewhere)),
        &["not on a bpf filesystem", "--pin-dir"],
    );
    assert!(
        !elsewhere.exists(),
        "a pin directory was made outside bpffs"
    );
    nothing_left("pin directory outside bpffs");
    let dotted = fresh.with_file_name(format!("pcltest-{}.pins", std::process::id()));
    refused(
        &s.gateway(&[], ["gc", "ge"], Some(&dotted)),
        &["does not allow a '.'"],
    );
    nothing_left("a pin directory bpffs cannot create");

    // Not root: uid 0 without capabilities, and nobody.
    refused(
        &s.gateway(&NO_CAPS, ["gc", "ge"], None),
        &[
            "lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN",
            "run it as root",
        ],
    );
    nothing_left("no capabilities");
    let nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
    ];
    refused(
        &s.gateway(&nobody, ["gc", "ge"], None),
        &["lacks CAP_BPF", "run it as root"],
    );
    nothing_left("nobody");

    // A metrics address in use: found only after the programs were attached.
    let taken =
        s.ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = taken.local_addr().unwrap().to_string();
    let out = s.gateway(&[], ["gc", "ge", "--metrics-addr", &addr], None);
    refused(&out, &["serving metrics on", &addr]);
    nothing_left("metrics address in use");
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_second_gateway_on_the_same_pins_or_interfaces_is_refused_and_the_first_keeps_enforcing() {
    require_root();
    let s = Setup::new("second");
    let mut first = s.running_gateway();
    let (attached, pinned) = (s.attached(), pins(&s.dirs.pin_dir));
    assert!(
        attached.contains("xdp"),
        "the first gateway is attached: {attached}"
    );

    refused(
        &s.gateway(&[], ["gc", "ge"], None),
        &["another portcullis daemon", "--pin-dir"],
    );
    let other_pins = s
        .dirs
        .pin_dir
        .with_file_name(format!("pcltest-{}-other", std::process::id()));
    refused(
        &s.gateway(&[], ["gc", "ge"], Some(&other_pins)),
        &[
            "interface gc already has an XDP program",
            "stop that daemon",
        ],
    );
    assert!(
        !other_pins.exists(),
        "pins left in {}: {:?}",
        other_pins.display(),
        pins(&other_pins)
    );

    assert_eq!(
        (s.attached(), pins(&s.dirs.pin_dir)),
        (attached, pinned),
        "the first gateway's program or pins changed"
    );
    assert!(first.running(), "the first gateway exited");
    drop(first);
    // Killed: its lock is gone with it, and a new daemon adopts its pins.
    s.restart_gateway();
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_node_daemon_that_cannot_start_says_why_in_one_line() {
    require_root();
    let s = Setup::new("nfault");
    let fresh = &s.dirs.pin_dir;
    refused(
        &s.node(
            &[],
            &[
                "--egress-uplink",
                "nosuch0",
                "--cluster-cidr",
                "10.244.0.0/16",
            ],
        ),
        &["--egress-uplink nosuch0", "ip link"],
    );
    refused(
        &s.node(&NO_CAPS, &[]),
        &["portcullis node lacks", "CAP_SYS_ADMIN", "run it as root"],
    );
    let out = s.node(&NO_BPFFS, &[]);
    refused(&out, &["not on a bpf filesystem"]);
    assert!(!fresh.exists(), "pins left: {:?}", pins(fresh));

    // A second node daemon on the pins of a running one.
    let mut first = s.running(&["node"]);
    let pinned = pins(fresh);
    refused(
        &s.node(&[], &[]),
        &["another portcullis daemon", "--pin-dir"],
    );
    assert_eq!(pins(fresh), pinned, "the first node daemon's pins changed");
    assert!(first.running(), "the first node daemon exited");
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pins_removed_under_a_running_gateway_are_pinned_again_and_survive_its_kill() {
    require_root();
    let s = Setup::new("repin");
    let daemon = s.running_gateway();
    let count = pins(&s.dirs.pin_dir).len();
    let all = s.remove_pins(None);
    let some = s.remove_pins(Some(&["FLOWS", "link_cluster"]));
    eprintln!(
        "  {count} pins removed: pinned again after {all:?}; FLOWS and link_cluster after {some:?}"
    );
    let log = std::fs::read_to_string(s.log()).unwrap();
    assert!(
        log.contains("pinned them again") && log.contains("link_cluster"),
        "{log}"
    );
    let restored = || s.published("pins_restored").as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while restored() != count as u64 + 2 {
        assert!(
            Instant::now() < deadline,
            "state says {} pins restored",
            restored()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The lock moved to the directory made again: a second gateway is still refused.
    refused(
        &s.gateway(&[], ["gc", "ge"], None),
        &["another portcullis daemon"],
    );
    let status = Command::new(BIN)
        .args(["status", "--pin-dir"])
        .arg(&s.dirs.pin_dir)
        .arg("--state-dir")
        .arg(&s.dirs.state_dir)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("pinned again: {}", count + 2)),
        "{status}"
    );
    // The restored link pins hold the program on the legs without the daemon.
    drop(daemon);
    for leg in ["gc", "ge"] {
        let link = s.ns.run(|| sh(&format!("ip -d link show {leg}")));
        assert!(
            link.contains("prog/xdp"),
            "{leg}: no XDP program after the kill: {link}"
        );
    }
    s.restart_gateway();
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pins_removed_under_a_running_node_daemon_are_pinned_again() {
    require_root();
    let s = Setup::new("nrepin");
    let _daemon = s.running(&["node"]);
    let taken = s.remove_pins(None);
    eprintln!("  node pins pinned again after {taken:?}");
}
