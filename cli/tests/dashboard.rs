//! The Grafana dashboard (configs/grafana/portcullis-dashboard.json) queries only metrics the
//! daemons export: every `portcullis_*` series named in a panel's query must appear, by its exact
//! name, on the `--metrics-addr` of real daemons in the network-namespace lab (root, kernel): the
//! XDP gateway and a node daemon with allowed and denied traffic, a CNI ADD, a broken manifest
//! (rejected object, failed update), then the gateway with `--datapath afxdp` for the engine's.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_lab::{Lab, LabChild, LabOptions};
use portcullis_policy::load::load_sources;
use portcullis_policy::probe::parse_probes;

#[path = "support/applied.rs"]
mod applied;
use applied::wait_until_applied;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Only the Kubernetes source counts these, and only when the API server fails (410 Gone, a
/// broken watch): the lab's daemons follow files.
const KUBE_ONLY: [&str; 2] = [
    "portcullis_watcher_relists_total",
    "portcullis_watcher_reconnects_total",
];

/// Exported only by a gateway whose AF_XDP engine runs.
const ENGINE_PREFIX: &str = "portcullis_gateway_afxdp_";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `portcullis_*` name in the `expr` of a query anywhere in `value`.
fn query_metrics(value: &serde_json::Value, names: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v.as_str()) {
                    ("expr", Some(expr)) => names.extend(metric_names(expr)),
                    _ => query_metrics(v, names),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| query_metrics(v, names)),
        _ => {}
    }
}

fn metric_names(expr: &str) -> impl Iterator<Item = String> + '_ {
    expr.match_indices("portcullis_").map(|(at, _)| {
        expr[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    })
}

/// The series names of a Prometheus text exposition (histograms without buckets are rendered as
/// summaries: `name{quantile}`, `name_sum`, `name_count`, which is what the queries use).
fn exported(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
}

/// Pins, state and manifests of the test's daemons, removed even when it fails.
struct Dirs {
    pins: PathBuf,
    tmp: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let id = format!("pcltest-{}-dashboard", std::process::id());
        let dirs = Dirs {
            pins: PathBuf::from("/sys/fs/bpf").join(&id),
            tmp: std::env::temp_dir().join(id),
        };
        std::fs::create_dir_all(dirs.manifests()).unwrap();
        dirs
    }

    fn manifests(&self) -> PathBuf {
        self.tmp.join("manifests")
    }

    fn state(&self, daemon: &str) -> PathBuf {
        self.tmp.join(daemon)
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A port nothing listens on in `netns` (each namespace has a loopback of its own).
fn free_port(lab: &Lab, netns: &str) -> u16 {
    lab.run_in_netns(netns, || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    })
    .unwrap()
    .unwrap()
}

/// `GET /metrics` on the loopback of `netns`; empty while nothing answers.
fn scrape(lab: &Lab, netns: &str, port: u16) -> String {
    lab.run_in_netns(netns, || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    })
    .unwrap()
    .unwrap_or_default()
}

/// Starts `portcullis SUBCOMMAND` in `netns` on the test's manifests, serving metrics on `port`,
/// and waits until it has applied a generation.
fn start(
    lab: &mut Lab,
    dirs: &Dirs,
    netns: &str,
    daemon: &str,
    args: &[&str],
    port: u16,
) -> LabChild {
    let state = dirs.state(daemon);
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--manifests")
        .arg(dirs.manifests())
        .arg("--pin-dir")
        .arg(dirs.pins.join(daemon))
        .arg("--state-dir")
        .arg(&state)
        .args(["--unpin-on-exit", "--metrics-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::null());
    let child = lab.spawn_in(netns, cmd).unwrap();
    wait_until_applied(&child, daemon, &state);
    child
}

/// Scrapes `endpoints` (netns, port) into `seen` until it holds all of `wanted`, 20 s at most.
fn collect(
    lab: &Lab,
    endpoints: &[(&str, u16)],
    wanted: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wanted.is_subset(seen) && Instant::now() < deadline {
        for (netns, port) in endpoints {
            seen.extend(exported(&scrape(lab, netns, *port)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs the chained CNI plugin's ADD for a lab pod whose veth the node daemon already watches, as
/// a container runtime would after the main plugin set it up.
fn cni_add(dirs: &Dirs, netns: &str, host_iface: &str, ip: &str) {
    let plugin_dir = dirs.tmp.join("cni");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let plugin = plugin_dir.join("portcullis-cni");
    std::os::unix::fs::symlink(BIN, &plugin).unwrap();
    let sandbox = format!("/run/netns/{netns}");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "dashboard",
        "type": "portcullis-cni",
        "socket": dirs.state("node").join("cni.sock"),
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": host_iface}, {"name": "eth0", "sandbox": sandbox}],
            "ips": [{"address": format!("{ip}/32"), "interface": 1}]
        }
    });
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "dashboard")
        .env("CNI_NETNS", &sandbox)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn every_metric_the_dashboard_queries_is_exported() {
    portcullis_testkit::require_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("configs/grafana/portcullis-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    query_metrics(&dashboard, &mut queried);
    for name in KUBE_ONLY {
        assert!(
            queried.remove(name),
            "the dashboard no longer queries {name}"
        );
    }
    let (engine, daemons): (BTreeSet<String>, BTreeSet<String>) = queried
        .iter()
        .cloned()
        .partition(|n| n.starts_with(ENGINE_PREFIX));
    assert!(!engine.is_empty() && daemons.len() > 20, "{queried:?}");

    // Declared before the lab, so dropped after it: the daemons are dead when their pins go.
    let dirs = Dirs::new();
    for entry in std::fs::read_dir(repo().join("configs/examples")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dirs.manifests().join(path.file_name().unwrap())).unwrap();
    }
    // The lab models the pods; the daemons read the policies themselves.
    let cluster = std::fs::read_to_string(dirs.manifests().join("cluster.yaml")).unwrap();
    let snapshot = load_sources([("cluster.yaml", cluster.as_str())]).snapshot;
    let probes =
        parse_probes(&std::fs::read_to_string(repo().join("configs/demo-probes.yaml")).unwrap())
            .unwrap();
    let mut lab = Lab::build(&snapshot, &probes, LabOptions::default()).unwrap();
    let legs = lab.gateway().clone();
    let node = lab.nodes()[0].netns.clone();
    let gateway_args: Vec<&str> = ["gateway"].into_iter().chain(legs.leg_args()).collect();
    let gateway_port = free_port(&lab, &legs.netns);
    let node_port = free_port(&lab, &node);
    let gateway = start(
        &mut lab,
        &dirs,
        &legs.netns,
        "gateway",
        &gateway_args,
        gateway_port,
    );
    start(&mut lab, &dirs, &node, "node", &["node"], node_port);

    // Drops on the gateway (x/a to the excepted host) and on a node hook (frontend to database).
    for (probe, result) in probes.iter().zip(lab.probe_all(&probes)) {
        result.unwrap_or_else(|e| panic!("probe {probe}: {e}"));
    }
    let database = lab.pod("app-stack", "database").unwrap().clone();
    cni_add(
        &dirs,
        &database.netns,
        &database.host_iface,
        &database.ips[0].to_string(),
    );
    // Not YAML: the file is rejected and, unattributable to an object, fails the update.
    std::fs::write(
        dirs.manifests().join("broken.yaml"),
        "kind: [NetworkPolicy\n",
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    collect(
        &lab,
        &[(&legs.netns, gateway_port), (&node, node_port)],
        &daemons,
        &mut seen,
    );

    // The engine's metrics: the gateway again, with every routable packet judged by AF_XDP.
    // A first input that cannot be used at all would stop the new daemon.
    std::fs::remove_file(dirs.manifests().join("broken.yaml")).unwrap();
    // SAFETY: signals a child of this test, which it has not reaped yet.
    assert_eq!(unsafe { libc::kill(gateway.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let afxdp_port = free_port(&lab, &legs.netns);
    let afxdp_args: Vec<&str> = gateway_args
        .iter()
        .copied()
        .chain(["--datapath", "afxdp"])
        .collect();
    start(
        &mut lab,
        &dirs,
        &legs.netns,
        "gateway-afxdp",
        &afxdp_args,
        afxdp_port,
    );
    lab.probe_all(&probes);
    collect(&lab, &[(&legs.netns, afxdp_port)], &engine, &mut seen);

    let missing: Vec<&String> = queried.iter().filter(|n| !seen.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no daemon exported: {missing:?}"
    );
}
