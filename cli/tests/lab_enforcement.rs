//! Enforcement on real traffic in the network-namespace lab (root, kernel): every conformance
//! case, established connections through policy changes and through a kill -9
//! and restart of the daemon, and a broken update that must not weaken enforcement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_lab::{Lab, LabChild, LabOptions, Verdict};
use portcullis_policy::load::load_sources;
use portcullis_policy::probe::parse_probes;

#[path = "support/applied.rs"]
mod applied;
#[path = "support/dirs.rs"]
mod dirs;
#[path = "support/monitor.rs"]
mod monitor;
use applied::wait_until_applied;
use dirs::DaemonDirs;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every conformance case as real traffic: the gateway (external probes) and the node hooks
/// (between pods) both enforcing.
#[test]
fn conformance_on_the_kernel_datapath() {
    let runner = portcullis_testkit::shared_dir().join("conformance/run");
    assert!(
        runner.exists(),
        "the conformance runner must be beside the repository or in $PORTCULLIS_SHARED: {}",
        runner.display()
    );
    let out = Command::new(&runner)
        .args(["--lab", "--quiet", "--bin", BIN])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

/// Every conformance probe with an external address as real traffic with the gateway's AF_XDP
/// engine judging every routable packet (`afxdp`), then only the packets no flow vouches for
/// (`hybrid`): the same verdicts as the XDP datapath.
#[test]
fn conformance_external_probes_through_the_af_xdp_engine() {
    let runner = portcullis_testkit::shared_dir().join("conformance/run");
    for datapath in ["afxdp", "hybrid"] {
        let out = Command::new(&runner)
            .args(["--lab", "--quiet", "--only", "external", "--bin", BIN])
            .env("PORTCULLIS_LAB_DATAPATH", datapath)
            .current_dir(repo())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("--datapath {datapath}\n{stdout}");
        assert!(
            out.status.success() && stdout.contains(" 0 failed"),
            "--datapath {datapath}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn egress_policy(except: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: egress-lan, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 192.168.1.0/24, except: [{except}]}}\n"
    )
}

/// Writes the policy file atomically so the daemon never reads half of it.
fn write_policy(dir: &Path, text: &str) {
    let tmp = dir.join(".policy.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policy.yaml")).unwrap();
}

fn published(dirs: &DaemonDirs) -> serde_json::Value {
    std::fs::read_to_string(dirs.state_dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Starts the daemon in the gateway namespace, with `args` (`--datapath afxdp`) besides the legs
/// and directories, and waits until it has applied a generation.
fn start_gateway(lab: &mut Lab, dirs: &DaemonDirs, args: &[&str]) -> LabChild {
    let _ = std::fs::remove_file(dirs.state_dir.join("state.json"));
    let legs = lab.gateway().clone();
    let mut cmd = dirs.daemon(&["gateway"]);
    cmd.args(legs.leg_args()).args(args);
    let child = lab.spawn_in(&legs.netns, cmd).unwrap();
    wait_until_applied(&child, "gateway", &dirs.state_dir);
    child
}

fn wait_for_generation(dirs: &DaemonDirs, previous_ms: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while published(dirs)["applied_unix_ms"].as_u64().unwrap_or(0) == previous_ms {
        assert!(
            Instant::now() < deadline,
            "the change was not applied within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A connection from x/a to an echo server on 192.168.1.20:7000, kept open by the test.
struct Established {
    stream: TcpStream,
}

impl Established {
    fn open(lab: &Lab) -> Established {
        let server: SocketAddr = "192.168.1.20:7000".parse().unwrap();
        let listener = lab
            .run_in_netns(lab.external_netns(), || TcpListener::bind(server))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let pod = lab.pod("x", "a").unwrap().netns.clone();
        let stream = lab
            .run_in_netns(&pod, || {
                TcpStream::connect_timeout(&server, Duration::from_secs(2))
            })
            .unwrap()
            .expect("the allowed connection opens");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        Established { stream }
    }

    fn round_trip(&mut self, n: u32) -> bool {
        let msg = n.to_be_bytes();
        let mut back = [0u8; 4];
        self.stream.write_all(&msg).is_ok()
            && self.stream.read_exact(&mut back).is_ok()
            && back == msg
    }
}

#[test]
fn established_flows_survive_policy_changes_restarts_and_bad_input() {
    established_flows_survive("xdp");
}

/// The same with the AF_XDP engine judging every packet: while the daemon is dead the program
/// judges with the flows the engine mirrored into its pinned maps, and the restarted engine reads
/// them back.
#[test]
fn established_flows_survive_with_the_af_xdp_engine() {
    established_flows_survive("afxdp");
}

/// The same in hybrid mode: the flows live in the program's pinned maps.
#[test]
fn established_flows_survive_with_the_hybrid_engine() {
    established_flows_survive("hybrid");
}

fn established_flows_survive(datapath: &str) {
    let dirs = DaemonDirs::new(&format!("survive-{datapath}"));
    let args = ["--datapath", datapath];
    std::fs::copy(
        repo().join("configs/examples/cluster.yaml"),
        dirs.manifests.join("cluster.yaml"),
    )
    .unwrap();
    write_policy(&dirs.manifests, &egress_policy("192.168.1.10/32"));
    let probes = parse_probes(
        r#"
- {"from": "x/a", "to": "192.168.1.20", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "192.168.1.10", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "192.168.1.30", "port": 443, "protocol": "TCP"}
"#,
    )
    .unwrap();
    let cluster = std::fs::read_to_string(dirs.manifests.join("cluster.yaml")).unwrap();
    let snapshot = load_sources([("cluster.yaml", cluster.as_str())]).snapshot;
    let options = LabOptions {
        timeout: Duration::from_millis(400),
        ..LabOptions::default()
    };
    let mut lab = Lab::build(&snapshot, &probes, options).unwrap();
    let mut gateway = start_gateway(&mut lab, &dirs, &args);
    let verdict = |lab: &Lab, i: usize| lab.probe(&probes[i]).unwrap().verdict;
    assert_eq!(verdict(&lab, 0), Verdict::Allow);
    assert_eq!(verdict(&lab, 1), Verdict::Deny);
    assert_eq!(verdict(&lab, 2), Verdict::Allow);

    // Policy changes under load: an echo loop on an established connection must never fail.
    let mut conn = Established::open(&lab);
    assert!(conn.round_trip(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let trips = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (stop, failures, trips) = (stop.clone(), failures.clone(), trips.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                if !conn.round_trip(n) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                trips.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            conn
        })
    };
    for i in 0..10 {
        let before = published(&dirs)["applied_unix_ms"].as_u64().unwrap_or(0);
        let except = if i % 2 == 0 {
            "192.168.1.30/32"
        } else {
            "192.168.1.10/32"
        };
        write_policy(&dirs.manifests, &egress_policy(except));
        wait_for_generation(&dirs, before);
    }
    stop.store(true, Ordering::Relaxed);
    let mut conn = loader.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "established connection broke during policy changes"
    );
    assert!(trips.load(Ordering::Relaxed) > 10);
    // The last version excepts .10 again: new connections follow it.
    assert_eq!(verdict(&lab, 1), Verdict::Deny);
    assert_eq!(verdict(&lab, 2), Verdict::Allow);

    // kill -9: the pinned program keeps enforcing and keeps the flow while no daemon runs.
    gateway.kill().unwrap();
    while gateway.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        verdict(&lab, 1),
        Verdict::Deny,
        "enforcement stopped with the daemon"
    );
    assert!(
        conn.round_trip(1000),
        "established flow lost when the daemon died"
    );
    gateway = start_gateway(&mut lab, &dirs, &args);
    assert!(
        conn.round_trip(1001),
        "established flow lost across the restart"
    );
    assert_eq!(verdict(&lab, 1), Verdict::Deny);
    assert_eq!(verdict(&lab, 0), Verdict::Allow);

    // A broken update (except outside its cidr) is rejected; the policy in force stays.
    let before = published(&dirs)["applied_unix_ms"].as_u64().unwrap_or(0);
    write_policy(&dirs.manifests, &egress_policy("10.0.0.0/8"));
    wait_for_generation(&dirs, before);
    let state = published(&dirs);
    assert!(
        state["rejected"]
            .to_string()
            .contains("ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.1.0/24"),
        "{state}"
    );
    assert_eq!(
        verdict(&lab, 1),
        Verdict::Deny,
        "a broken update weakened enforcement"
    );
    assert_eq!(verdict(&lab, 0), Verdict::Allow);
    assert!(conn.round_trip(1002));

    // SIGTERM with --unpin-on-exit is not used here: the test removes the pins itself.
    gateway.kill().unwrap();
    lab.teardown().unwrap();
}

/// `status` shows the enforcement in place and `monitor --type drop` reports a denied packet with
/// its 5-tuple and the policy that denied it, both from separate processes reading the pins.
#[test]
fn status_and_monitor_read_the_running_gateway() {
    status_and_monitor("xdp");
}

/// The same with the AF_XDP engine judging: its drop reaches `monitor` through the daemon, and
/// `status` shows the engine (mode, queues, sockets, rings) with its counters.
#[test]
fn status_and_monitor_read_the_running_af_xdp_engine() {
    status_and_monitor("afxdp");
}

fn status_and_monitor(datapath: &str) {
    let dirs = DaemonDirs::new(&format!("monitor-{datapath}"));
    std::fs::copy(
        repo().join("configs/examples/cluster.yaml"),
        dirs.manifests.join("cluster.yaml"),
    )
    .unwrap();
    write_policy(&dirs.manifests, &egress_policy("192.168.1.10/32"));
    let probes =
        parse_probes(r#"- {"from": "x/a", "to": "192.168.1.10", "port": 443, "protocol": "TCP"}"#)
            .unwrap();
    let cluster = std::fs::read_to_string(dirs.manifests.join("cluster.yaml")).unwrap();
    let snapshot = load_sources([("cluster.yaml", cluster.as_str())]).snapshot;
    let options = LabOptions {
        timeout: Duration::from_millis(300),
        retries: 0,
        ..LabOptions::default()
    };
    let mut lab = Lab::build(&snapshot, &probes, options).unwrap();
    let gateway = start_gateway(&mut lab, &dirs, &["--datapath", datapath]);
    let gw_netns = lab.gateway().netns.clone();
    let tool = |args: &[&str]| dirs.tool(args);
    let monitor = tool(&[
        "monitor",
        "--type",
        "drop",
        "--output",
        "json",
        "--count",
        "1",
        "--duration",
        "15s",
    ]);
    let event = monitor::first_event(&mut lab, &gw_netns, monitor, |lab| {
        assert_eq!(lab.probe(&probes[0]).unwrap().verdict, Verdict::Deny)
    });
    assert_eq!(event["src"], "10.244.7.10", "{event}");
    assert_eq!(event["dst"], "192.168.1.10");
    assert_eq!(event["dst_port"], 443);
    assert_eq!(event["protocol"], "TCP");
    assert_eq!(event["direction"], "egress");
    assert_eq!(event["reason"], "policy");
    assert_eq!(event["iface"], "cluster");
    assert_eq!(event["policies"][0], "x/egress-lan");

    let status = lab
        .output_in(&gw_netns, tool(&["status", "--output", "json"]))
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let legs: Vec<&str> = status["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["iface"].as_str().unwrap())
        .collect();
    assert!(
        legs.contains(&"cluster") && legs.contains(&"external"),
        "{status}"
    );
    assert_eq!(
        status["links_pinned"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    assert!(status["prefixes"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["datapath"], datapath, "{status}");
    if datapath == "xdp" {
        assert!(
            status["counters"]["drop_policy"].as_u64().unwrap() >= 1,
            "{status}"
        );
        assert_eq!(
            status["drops_by_group"][0]["policies"][0], "x/egress-lan",
            "{status}"
        );
    } else {
        // The engine publishes its status once a second.
        std::thread::sleep(Duration::from_millis(1500));
        let status = lab
            .output_in(&gw_netns, tool(&["status", "--output", "json"]))
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let engine = &status["engine"];
        assert_eq!(engine["mode"], datapath, "{status}");
        let drop_policy = engine["counters"][portcullis_common::COUNTER_DROP_POLICY as usize]
            .as_u64()
            .unwrap_or(0);
        assert!(drop_policy >= 1, "{status}");
        let queue = &engine["queues"][0]["rings"]["cluster"];
        assert_eq!(queue["iface"], "cluster", "{status}");
        assert!(queue["received"].as_u64().unwrap() >= 1, "{status}");
        assert!(
            status["counters"]["to_engine"].as_u64().unwrap() >= 1,
            "{status}"
        );
    }
    gateway.kill().unwrap();
    lab.teardown().unwrap();
}

/// The same for the node hook: a pod-to-pod packet its policy denies shows up in
/// `monitor --node` with the deciding policy, and `status --node` lists the pod interfaces.
#[test]
fn node_status_and_monitor_read_the_running_node_hook() {
    let dirs = DaemonDirs::new("nodemon");
    std::fs::copy(
        repo().join("configs/examples/cluster.yaml"),
        dirs.manifests.join("cluster.yaml"),
    )
    .unwrap();
    write_policy(&dirs.manifests, &egress_policy("192.168.1.10/32"));
    // x/b is no address of 192.168.1.0/24: x/a's egress policy denies it.
    let probes =
        parse_probes(r#"- {"from": "x/a", "to": "x/b", "port": 443, "protocol": "TCP"}"#).unwrap();
    let cluster = std::fs::read_to_string(dirs.manifests.join("cluster.yaml")).unwrap();
    let snapshot = load_sources([("cluster.yaml", cluster.as_str())]).snapshot;
    let options = LabOptions {
        timeout: Duration::from_millis(300),
        retries: 0,
        ..LabOptions::default()
    };
    let mut lab = Lab::build(&snapshot, &probes, options).unwrap();
    let node_netns = lab.nodes()[0].netns.clone();
    let cmd = dirs.daemon(&["node", "--unpin-on-exit"]);
    let node = lab.spawn_in(&node_netns, cmd).unwrap();
    wait_until_applied(&node, "node daemon", &dirs.state_dir);
    let tool = |args: &[&str]| {
        let mut cmd = dirs.tool(args);
        cmd.arg("--node");
        cmd
    };
    let monitor = tool(&[
        "monitor",
        "--type",
        "drop",
        "--output",
        "json",
        "--count",
        "1",
        "--duration",
        "15s",
    ]);
    let event = monitor::first_event(&mut lab, &node_netns, monitor, |lab| {
        assert_eq!(lab.probe(&probes[0]).unwrap().verdict, Verdict::Deny)
    });
    assert_eq!(event["src"], "10.244.7.10", "{event}");
    assert_eq!(event["dst"], "10.244.7.20");
    assert_eq!(event["dst_port"], 443);
    assert_eq!(event["direction"], "egress");
    assert_eq!(event["policies"][0], "x/egress-lan");

    let status = lab
        .output_in(&node_netns, tool(&["status", "--output", "json"]))
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["interfaces"].as_array().unwrap().len(),
        13,
        "{status}"
    );
    assert!(
        status["counters"]["drop_policy"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["identities"], 13, "{status}");
    node.kill().unwrap();
    lab.teardown().unwrap();
}
