//! The egress gateway on real traffic (root, kernel): pods' egress reaches the gateway only by the
//! nodes' steering (the nodes' default route is a plain router), the gateway decides on the pod's
//! address and translates allowed packets of selected pods to the EgressGateway's egress IP; the
//! external servers see only that address, replies come back, and translated connections survive
//! policy changes, a gateway restart and a broken update.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_lab::{Lab, LabChild, LabOptions, Verdict, GATEWAY_NODE, NODE_UPLINK_IFACE};
use portcullis_policy::load::load_sources;
use portcullis_policy::probe::{parse_probes, Probe};

#[path = "support/applied.rs"]
mod applied;
#[path = "support/monitor.rs"]
mod monitor;
use applied::{applied_unix_ms, wait_until_applied};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const EGRESS_V4: &str = "198.18.0.100";
const EGRESS_V6: &str = "2001:db8:e::100";

/// Namespace x with two dual-stack pods.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x, env: prod}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-0}
status: {podIPs: [{ip: 10.244.7.10}, {ip: "fd00:10:244::7:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.7.20}, {ip: "fd00:10:244::7:20"}]}
"#;

/// x/a may reach 192.168.1.0/24 except `except`, and 2001:db8:1::/64; x/b is not selected.
fn egress_policy(except: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: egress-lan, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 192.168.1.0/24, except: [{except}]}}\n    - ipBlock: {{cidr: \"2001:db8:1::/64\"}}\n"
    )
}

/// Every pod of namespaces labelled env=prod leaves as the egress IPs, except to 192.168.1.30.
fn egress_gateway(egress_ips: &str) -> String {
    format!(
        "apiVersion: portcullis.io/v1alpha1\nkind: EgressGateway\nmetadata: {{name: prod-egress}}\nspec:\n  selectors:\n  - namespaceSelector: {{matchLabels: {{env: prod}}}}\n  destinationCIDRs: [\"0.0.0.0/0\", \"::/0\"]\n  excludedCIDRs: [\"192.168.1.30/32\"]\n  gateway:\n    nodeSelector: {{matchLabels: {{portcullis.io/egress-gateway: \"true\"}}}}\n    egressIPs: [{egress_ips}]\n"
    )
}

const PROBES: &str = r#"
- {"from": "x/a", "to": "192.168.1.20", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "192.168.1.20", "port": 53, "protocol": "UDP"}
- {"from": "x/a", "to": "192.168.1.10", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "192.168.1.30", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "2001:db8:1::20", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "2001:db8:1::20", "port": 53, "protocol": "UDP"}
- {"from": "x/b", "to": "192.168.1.20", "port": 443, "protocol": "TCP"}
"#;

/// A lab whose nodes steer to the gateway, with the gateway and node daemons running; pins,
/// state and manifests removed and the namespaces deleted even when the test fails.
struct EgressLab {
    lab: Lab,
    dir: PathBuf,
    pin_dir: PathBuf,
    gateway: Option<LabChild>,
    gateway_args: Vec<String>,
    nodes: Vec<LabChild>,
    probes: Vec<Probe>,
}

impl EgressLab {
    fn start(tag: &str, gateway_args: &[&str]) -> EgressLab {
        let id = format!("pcltest-{}-eg-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let egress = egress_gateway(&format!("\"{EGRESS_V4}\", \"{EGRESS_V6}\""));
        let snapshot =
            load_sources([("cluster.yaml", CLUSTER), ("egress.yaml", egress.as_str())]).snapshot;
        let probes = parse_probes(PROBES).unwrap();
        let options = LabOptions {
            timeout: Duration::from_millis(500),
            steer_via_router: true,
            egress_ips: vec![EGRESS_V4.parse().unwrap(), EGRESS_V6.parse().unwrap()],
            ..LabOptions::default()
        };
        let lab = Lab::build(&snapshot, &probes, options).unwrap();
        std::fs::write(manifests.join("cluster.yaml"), CLUSTER).unwrap();
        std::fs::write(manifests.join("nodes.yaml"), lab.node_manifest()).unwrap();
        let mut this = EgressLab {
            lab,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            dir,
            gateway: None,
            gateway_args: gateway_args.iter().map(|a| a.to_string()).collect(),
            nodes: Vec::new(),
            probes,
        };
        this.write("policy.yaml", &egress_policy("192.168.1.10/32"));
        this.write("egress.yaml", &egress);
        this.start_gateway();
        let cluster_cidrs = this.lab.cluster_cidrs();
        for node in this.lab.nodes().to_vec() {
            let state = this.dir.join(format!("state-{}", node.name));
            let mut cmd = this.daemon("node", &format!("node-{}", node.name), &state);
            for cidr in &cluster_cidrs {
                cmd.arg("--cluster-cidr").arg(cidr.to_string());
            }
            cmd.args(["--egress-uplink", NODE_UPLINK_IFACE]);
            let child = this.lab.spawn_in(&node.netns, cmd).unwrap();
            wait_until_applied(&child, "node daemon", &state);
            this.nodes.push(child);
        }
        // The steering follows the pods' interfaces: give it a moment after the first apply.
        this.wait_for(|| this.lab.probe(&this.probes[0]).unwrap().verdict == Verdict::Allow);
        this
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    fn gateway_state(&self) -> PathBuf {
        self.dir.join("state-gateway")
    }

    /// Writes a manifest atomically, so a daemon never reads half of it.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.manifests().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests().join(name)).unwrap();
    }

    fn daemon(&self, subcommand: &str, pins: &str, state: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg(subcommand)
            .arg("--manifests")
            .arg(self.manifests())
            .arg("--pin-dir")
            .arg(self.pin_dir.join(pins))
            .arg("--state-dir")
            .arg(state)
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }

    fn start_gateway(&mut self) {
        let _ = std::fs::remove_file(self.gateway_state().join("state.json"));
        let legs = self.lab.gateway().clone();
        let mut cmd = self.daemon("gateway", "gateway", &self.gateway_state());
        cmd.args(["--cluster-iface", &legs.cluster_iface])
            .args(["--external-iface", &legs.external_iface])
            .args(["--node-name", GATEWAY_NODE])
            .args(&self.gateway_args);
        let child = self.lab.spawn_in(&legs.netns, cmd).unwrap();
        wait_until_applied(&child, "gateway", &self.gateway_state());
        self.gateway = Some(child);
    }

    fn kill_gateway(&mut self) {
        let gateway = self.gateway.take().unwrap();
        gateway.kill().unwrap();
        while gateway.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Rewrites a manifest and waits until the gateway has applied (or rejected) it.
    fn change(&self, name: &str, text: &str) {
        let before = applied_unix_ms(&self.gateway_state());
        self.write(name, text);
        self.wait_for(|| applied_unix_ms(&self.gateway_state()) != before);
    }

    fn wait_for(&self, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(Instant::now() < deadline, "not within 15 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn published(&self) -> serde_json::Value {
        std::fs::read_to_string(self.gateway_state().join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `portcullis status --output json` of the gateway, from its namespace.
    fn status(&self) -> serde_json::Value {
        let mut cmd = Command::new(BIN);
        cmd.args(["status", "--output", "json", "--pin-dir"])
            .arg(self.pin_dir.join("gateway"))
            .arg("--state-dir")
            .arg(self.gateway_state());
        let out = self.lab.output_in(&self.lab.gateway().netns, cmd).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The first drop event `monitor --type drop` reports while `act` runs.
    fn first_drop_event(&mut self, act: impl FnOnce(&Lab)) -> serde_json::Value {
        let mut monitor = Command::new(BIN);
        monitor
            .args([
                "monitor", "--type", "drop", "--output", "json", "--count", "1",
            ])
            .args(["--duration", "15s", "--pin-dir"])
            .arg(self.pin_dir.join("gateway"))
            .arg("--state-dir")
            .arg(self.gateway_state());
        let netns = self.lab.gateway().netns.clone();
        monitor::first_event(&mut self.lab, &netns, monitor, act)
    }

    /// What the external server saw for probe `i`, after checking its verdict.
    fn probe(&self, i: usize, verdict: Verdict) -> Option<IpAddr> {
        let o = self.lab.probe(&self.probes[i]).unwrap();
        assert_eq!(o.verdict, verdict, "probe {i}: {:?}", self.probes[i]);
        o.source_seen
    }

    fn run_in_pod<T: Send>(&self, pod: &str, f: impl FnOnce() -> T + Send) -> T {
        let netns = self.lab.pod("x", pod).unwrap().netns.clone();
        self.lab.run_in_netns(&netns, f).unwrap()
    }

    fn in_external<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.lab.run_in_netns(self.lab.external_netns(), f).unwrap()
    }
}

impl Drop for EgressLab {
    fn drop(&mut self) {
        for child in self.gateway.iter().chain(&self.nodes) {
            let _ = child.kill();
        }
        let _ = self.lab.teardown();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

/// Pod egress through steering and SNAT: allowed probes arrive from the egress IP (v4 and v6, TCP
/// and UDP, replies back), a denied probe stays denied and `monitor` names the pod's policy, an
/// excluded destination and ... see the module docs.
#[test]
fn pod_egress_leaves_through_the_gateway_as_the_egress_ip() {
    let mut lab = EgressLab::start("snat", &[]);
    assert_eq!(lab.probe(0, Verdict::Allow), ip(EGRESS_V4), "TCP v4");
    assert_eq!(lab.probe(1, Verdict::Allow), ip(EGRESS_V4), "UDP v4");
    assert_eq!(lab.probe(2, Verdict::Deny), None, "denied by policy");
    assert_eq!(
        lab.probe(3, Verdict::Allow),
        ip("10.244.7.10"),
        "an excluded destination leaves untranslated"
    );
    assert_eq!(lab.probe(4, Verdict::Allow), ip(EGRESS_V6), "TCP v6");
    assert_eq!(lab.probe(5, Verdict::Allow), ip(EGRESS_V6), "UDP v6");
    assert_eq!(
        lab.probe(6, Verdict::Allow),
        ip(EGRESS_V4),
        "unselected by policy"
    );

    // The denied probe is dropped at the gateway on the pod's own address and attributed to the
    // pod's policy.
    let denied = lab.probes[2].clone();
    let event = lab.first_drop_event(|lab| {
        assert_eq!(lab.probe(&denied).unwrap().verdict, Verdict::Deny);
    });
    assert_eq!(event["src"], "10.244.7.10", "{event}");
    assert_eq!(event["dst"], "192.168.1.10", "{event}");
    assert_eq!(event["reason"], "policy", "{event}");
    assert_eq!(event["policies"][0], "x/egress-lan", "{event}");

    // `monitor --type translation` lists the translations in use (the probes' flows are live).
    let mut monitor = Command::new(BIN);
    monitor
        .args(["monitor", "--type", "translation", "--output", "json"])
        .args(["--duration", "300ms", "--pin-dir"])
        .arg(lab.pin_dir.join("gateway"));
    let out = lab
        .lab
        .output_in(&lab.lab.gateway().netns, monitor)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let translations: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        translations.iter().any(|t| t["event"] == "active"
            && t["pod"] == "10.244.7.10"
            && t["egress_ip"] == EGRESS_V4
            && t["remote"] == "192.168.1.20"),
        "{translations:?}"
    );

    let status = lab.status();
    let served = &status["egress"]["egress_gateways"];
    assert_eq!(served[0]["name"], "prod-egress", "{status}");
    let snat = &status["snat"];
    assert_eq!(snat["enabled"], true, "{status}");
    assert!(
        snat["counters"]["new_translations"].as_u64().unwrap() >= 5,
        "{status}"
    );
    assert!(
        snat["counters"]["arp_replies"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        snat["counters"]["nd_replies"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let ips: Vec<&str> = (snat["egress_ips"].as_array().unwrap().iter())
        .filter_map(|e| e["ip"].as_str())
        .collect();
    assert!(
        ips.contains(&EGRESS_V4) && ips.contains(&EGRESS_V6),
        "{status}"
    );
}

/// A pool of two source ports: two connections to one server get them, the third is dropped with
/// its own reason (never given a port another connection holds), counted, and reported by
/// `monitor` with the pod's policy.
#[test]
fn an_exhausted_port_pool_drops_with_its_own_reason() {
    let mut lab = EgressLab::start("pool", &["--snat-ports", "40000-40001"]);
    let server: SocketAddr = "192.168.1.20:7400".parse().unwrap();
    let listener = lab.in_external(|| TcpListener::bind(server)).unwrap();
    let accepted = std::thread::spawn(move || {
        (0..2)
            .map(|_| listener.accept().unwrap())
            .collect::<Vec<_>>()
    });
    let pod = lab.lab.pod("x", "a").unwrap().netns.clone();
    let connect = |lab: &Lab| {
        lab.run_in_netns(&pod, || {
            TcpStream::connect_timeout(&server, Duration::from_secs(1))
        })
        .unwrap()
    };
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&lab.lab).unwrap()).collect();
    let accepted = accepted.join().unwrap();
    let ports: BTreeSet<u16> = accepted.iter().map(|(_, peer)| peer.port()).collect();
    assert_eq!(ports, BTreeSet::from([40000, 40001]), "{accepted:?}");
    let event = lab.first_drop_event(|lab| {
        assert!(connect(lab).is_err(), "a third connection got a port");
    });
    assert_eq!(event["reason"], "snat-pool-exhausted", "{event}");
    assert_eq!(event["src"], "10.244.7.10", "{event}");
    let status = lab.status();
    assert!(
        status["snat"]["counters"]["pool_exhausted"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
    drop(held);
}

/// Every conformance probe with an external address keeps its expected verdict with an
/// EgressGateway selecting every pod in force (`lab run` reads it from the manifests like the other
/// kinds), and an allowed pod → external probe arrives from the egress IP.
#[test]
fn conformance_external_probes_with_every_pod_translated() {
    let cases = portcullis_testkit::shared_dir().join("conformance/cases");
    let root = std::env::temp_dir().join(format!("pcltest-{}-eg-conformance", std::process::id()));
    let egress = "apiVersion: portcullis.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: everyone}\nspec:\n  selectors:\n  - namespaceSelector: {}\n  destinationCIDRs: [\"0.0.0.0/0\", \"::/0\"]\n  gateway:\n    nodeSelector: {matchLabels: {portcullis.io/egress-gateway: \"true\"}}\n    egressIPs: [\"198.18.0.200\", \"2001:db8:e::200\"]\n";
    for case in std::fs::read_dir(&cases).unwrap().flatten() {
        let dir = root.join(case.file_name());
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["policies.yaml", "probes.yaml"] {
            std::fs::copy(case.path().join(file), dir.join(file)).unwrap();
        }
        let cluster = std::fs::read_to_string(case.path().join("cluster.yaml")).unwrap();
        std::fs::write(
            dir.join("cluster.yaml"),
            format!("{cluster}\n---\n{egress}"),
        )
        .unwrap();
    }
    let runner = portcullis_testkit::shared_dir().join("conformance/run");
    let out = Command::new(&runner)
        .args(["--lab", "--quiet", "--only", "external", "--bin", BIN])
        .arg(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One case by hand: its allowed pod → external probes were seen from the egress IP.
    let case = root.join("005-seed-egress-ipblock-except");
    let out = Command::new(BIN)
        .args(["lab", "run", "--output", "json", "--manifests"])
        .arg(case.join("cluster.yaml"))
        .arg(case.join("policies.yaml"))
        .arg("--probes")
        .arg(case.join("probes.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let translated: Vec<&serde_json::Value> = (lines.iter())
        .filter(|l| l["verdict"] == "allow" && l["from"].as_str().unwrap().contains('/'))
        .filter(|l| !l["to"].as_str().unwrap().contains('/'))
        .collect();
    assert!(!translated.is_empty(), "{lines:?}");
    for l in translated {
        let v6 = l["to"].as_str().unwrap().contains(':');
        let egress_ip = if v6 {
            "2001:db8:e::200"
        } else {
            "198.18.0.200"
        };
        assert_eq!(l["source_seen"], egress_ip, "{l}");
    }
}

/// Two pods using the same source port to the same destination get different translated ports,
/// and each gets its own replies (UDP and TCP).
#[test]
fn two_pods_with_the_same_source_port_get_distinct_translations() {
    let lab = EgressLab::start("ports", &[]);
    let server: SocketAddr = "192.168.1.20:7200".parse().unwrap();
    let udp = lab.in_external(|| UdpSocket::bind(server)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let echo = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            for _ in 0..2 {
                let (n, from) = udp.recv_from(&mut buf).unwrap();
                seen.lock().unwrap().insert(from);
                udp.send_to(&buf[..n], from).unwrap();
            }
        })
    };
    for pod in ["a", "b"] {
        let reply = lab.run_in_pod(pod, || {
            let s = UdpSocket::bind("0.0.0.0:40000").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(pod.as_bytes(), server).unwrap();
            let mut buf = [0u8; 16];
            s.recv(&mut buf).map(|n| buf[..n].to_vec())
        });
        assert_eq!(
            reply.unwrap(),
            pod.as_bytes(),
            "pod {pod} got its own reply"
        );
    }
    echo.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "two distinct translated tuples: {seen:?}");
    assert!(
        seen.iter().all(|s| s.ip() == ip(EGRESS_V4).unwrap()),
        "{seen:?}"
    );

    let tcp_server: SocketAddr = "192.168.1.20:7201".parse().unwrap();
    let listener = lab.in_external(|| TcpListener::bind(tcp_server)).unwrap();
    let peers = std::thread::spawn(move || {
        (0..2)
            .map(|_| listener.accept().unwrap().1)
            .collect::<BTreeSet<_>>()
    });
    let mut streams = Vec::new();
    for pod in ["a", "b"] {
        streams.push(lab.run_in_pod(pod, || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&"0.0.0.0:40001".parse::<SocketAddr>().unwrap().into())?;
            s.connect_timeout(&tcp_server.into(), Duration::from_secs(2))?;
            std::io::Result::Ok(TcpStream::from(s))
        }));
    }
    assert!(streams.iter().all(|s| s.is_ok()), "{streams:?}");
    let peers = peers.join().unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers.iter().all(|p| p.ip() == ip(EGRESS_V4).unwrap()),
        "{peers:?}"
    );
}

/// An echo loop on a translated connection keeps working through policy changes, a kill -9 and
/// restart of the gateway (its pinned translations), and a broken EgressGateway update, which is
/// rejected by name while the last good one stays in force.
#[test]
fn translated_connections_survive_changes_restarts_and_bad_input() {
    let mut lab = EgressLab::start("survive", &[]);
    let server: SocketAddr = "192.168.1.20:7300".parse().unwrap();
    let listener = lab.in_external(|| TcpListener::bind(server)).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        peer
    });
    let mut conn = lab
        .run_in_pod("a", || {
            TcpStream::connect_timeout(&server, Duration::from_secs(2))
        })
        .expect("the allowed connection opens");
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(peer.join().unwrap().ip(), ip(EGRESS_V4).unwrap());
    let round_trip = |conn: &mut TcpStream, n: u32| {
        let mut back = [0u8; 4];
        conn.write_all(&n.to_be_bytes()).is_ok()
            && conn.read_exact(&mut back).is_ok()
            && back == n.to_be_bytes()
    };
    assert!(round_trip(&mut conn, 0));

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let streaming = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                if !round_trip(&mut conn, n) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            conn
        })
    };
    for i in 0..6 {
        let except = ["192.168.1.30/32", "192.168.1.10/32"][i % 2];
        lab.change("policy.yaml", &egress_policy(except));
    }
    lab.kill_gateway();
    std::thread::sleep(Duration::from_millis(300));
    lab.start_gateway();
    // Two egress IPv4 addresses: rejected by name, the last good EgressGateway stays.
    lab.change(
        "egress.yaml",
        &egress_gateway(&format!("\"{EGRESS_V4}\", \"198.18.0.101\"")),
    );
    let rejected = lab.published()["rejected"].to_string();
    assert!(
        rejected.contains("EgressGateway prod-egress") && rejected.contains("egressIPs"),
        "{rejected}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut conn = streaming.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the translated connection broke"
    );
    assert!(round_trip(&mut conn, 1_000_000));
    assert_eq!(lab.probe(0, Verdict::Allow), ip(EGRESS_V4));
}
