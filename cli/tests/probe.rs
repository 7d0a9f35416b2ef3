//! `portcullis probe` (root, kernel): real attempts from inside a lab pod's network namespace,
//! found the way a node finds it, through the running node hook, next to `explain`'s verdict.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use portcullis_lab::{Lab, LabOptions};
use portcullis_policy::load::load_sources;
use portcullis_policy::probe::parse_probes;

#[path = "support/applied.rs"]
mod applied;
use applied::wait_until_applied;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Addresses no other test's cluster uses: a lab of another test running at the same time must
/// not hold them.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: probe, labels: {kubernetes.io/metadata.name: probe}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: probe, labels: {app: client}}
spec: {containers: [{name: main, image: x}]}
status: {phase: Running, podIP: 10.251.7.10, podIPs: [{ip: 10.251.7.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: probe, labels: {app: web}}
spec: {containers: [{name: main, image: x}]}
status: {phase: Running, podIP: 10.251.7.20, podIPs: [{ip: 10.251.7.20}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: probe, labels: {app: db}}
spec: {nodeName: node-7, containers: [{name: main, image: x}]}
status: {phase: Running, podIP: 10.251.7.30, podIPs: [{ip: 10.251.7.30}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: probe}
spec: {clusterIP: 10.251.96.80, selector: {app: web}, ports: [{port: 8080, targetPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-svc, namespace: probe}
spec: {clusterIP: 10.251.96.30, selector: {app: db}, ports: [{port: 15432, targetPort: 5432}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-closed, namespace: probe}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
"#;

/// Pins, published state and manifests of one node daemon, removed even when the test fails.
struct Dirs {
    pins: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let pins = tempfile::Builder::new()
            .prefix("pcltest-probe-")
            .tempdir_in("/sys/fs/bpf")
            .unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("cluster.yaml"), CLUSTER).unwrap();
        Dirs { pins, work }
    }

    fn state_dir(&self) -> PathBuf {
        self.work.path().join("state")
    }

    /// `portcullis probe --from FROM --to TO --port PORT` against these manifests and pins.
    fn probe(&self, from: &str, to: &str, port: u16) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["probe", "--from", from, "--to", to, "--port"])
            .arg(port.to_string())
            .args(["--timeout-ms", "1000", "--output", "json", "--manifests"])
            .arg(self.work.path().join("cluster.yaml"))
            .arg("--pin-dir")
            .arg(self.pins.path())
            .arg("--state-dir")
            .arg(self.state_dir());
        cmd
    }
}

fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// An allowed pair connects and a denied pair times out, each as `explain` predicts, through the
/// node hook; the denied attempt's drop event names the policy.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn probe_agrees_with_explain_through_the_node_hook() {
    let dirs = Dirs::new();
    let probes = parse_probes(
        r#"[{"from": "probe/client", "to": "probe/web", "port": 80, "protocol": "TCP"},
            {"from": "probe/client", "to": "probe/db", "port": 5432, "protocol": "TCP"}]"#,
    )
    .unwrap();
    // The lab puts every pod on one node: the db's nodeName is for the error test.
    let mut snapshot = load_sources([("cluster.yaml", CLUSTER)]).snapshot;
    for pod in &mut snapshot.pods {
        pod.node = None;
    }
    let mut lab = Lab::build(&snapshot, &probes, LabOptions::default()).unwrap();
    let node_netns = lab.nodes()[0].netns.clone();
    let mut cmd = Command::new(BIN);
    cmd.arg("node")
        .arg("--manifests")
        .arg(dirs.work.path().join("cluster.yaml"))
        .arg("--pin-dir")
        .arg(dirs.pins.path())
        .arg("--state-dir")
        .arg(dirs.state_dir())
        .arg("--unpin-on-exit")
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::null());
    let node = lab.spawn_in(&node_netns, cmd).unwrap();
    wait_until_applied(&node, "node daemon", &dirs.state_dir());

    let out = lab
        .output_in(&node_netns, dirs.probe("probe/client", "probe/web", 80))
        .unwrap();
    let allowed = report(&out);
    assert_eq!(out.status.code(), Some(0), "{allowed}");
    assert_eq!(allowed["predicted"], "allow", "{allowed}");
    assert_eq!(allowed["observed"], "connected", "{allowed}");
    assert_eq!(allowed["agree"], true, "{allowed}");
    assert_eq!(allowed["drops"], serde_json::json!([]), "{allowed}");

    let out = lab
        .output_in(&node_netns, dirs.probe("probe/client", "probe/db", 5432))
        .unwrap();
    let denied = report(&out);
    assert_eq!(out.status.code(), Some(0), "{denied}");
    assert_eq!(denied["predicted"], "deny", "{denied}");
    assert_eq!(denied["observed"], "timeout", "{denied}");
    assert_eq!(denied["agree"], true, "{denied}");
    let drop = &denied["drops"][0];
    assert_eq!(drop["src"], "10.251.7.10", "{denied}");
    assert_eq!(drop["dst"], "10.251.7.30", "{denied}");
    assert_eq!(drop["dst_port"], 5432, "{denied}");
    assert_eq!(drop["policies"][0], "probe/db-closed", "{denied}");

    // Services: the node translates their cluster IPs (kube-proxy's DNAT, here by nftables in
    // the node's namespace) before the node hook judges the pod behind them.
    let nat = "table ip pcl_probe_svc {
        chain pre {
            type nat hook prerouting priority -100;
            ip daddr 10.251.96.80 tcp dport 8080 dnat to 10.251.7.20:80
            ip daddr 10.251.96.30 tcp dport 15432 dnat to 10.251.7.30:5432
        }
    }";
    lab.nft(&node_netns, nat).unwrap();
    let out = lab
        .output_in(
            &node_netns,
            dirs.probe("probe/client", "probe/web-svc", 8080),
        )
        .unwrap();
    let allowed = report(&out);
    assert_eq!(out.status.code(), Some(0), "{allowed}");
    assert_eq!(allowed["predicted"], "allow", "{allowed}");
    assert_eq!(allowed["observed"], "connected", "{allowed}");
    assert_eq!(
        allowed["service"]["cluster_ip"], "10.251.96.80",
        "{allowed}"
    );
    assert_eq!(
        allowed["service"]["backends"][0]["pod"], "probe/web",
        "{allowed}"
    );
    assert_eq!(allowed["service"]["backends"][0]["port"], 80, "{allowed}");
    let out = lab
        .output_in(
            &node_netns,
            dirs.probe("probe/client", "probe/db-svc", 15432),
        )
        .unwrap();
    let denied = report(&out);
    assert_eq!(out.status.code(), Some(0), "{denied}");
    assert_eq!(denied["predicted"], "deny", "{denied}");
    assert_eq!(denied["observed"], "timeout", "{denied}");
    let drop = &denied["drops"][0];
    assert_eq!(
        drop["dst"], "10.251.7.30",
        "the drop after translation: {denied}"
    );
    assert_eq!(drop["dst_port"], 5432, "{denied}");
    assert_eq!(drop["policies"][0], "probe/db-closed", "{denied}");
    node.kill().unwrap();
    lab.teardown().unwrap();
}

/// Outside the pod's node, and for a pod the cluster does not have, probe refuses with exit 2
/// and says why (where the pod runs, when the cluster state knows).
#[test]
#[ignore = "needs root (every network namespace): scripts/test runs it with --include-ignored"]
fn probe_refuses_pods_it_cannot_reach_from_here() {
    let dirs = Dirs::new();
    let out = dirs.probe("probe/db", "probe/web", 80).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a pod of this node"), "{stderr}");
    assert!(stderr.contains("on node node-7"), "{stderr}");

    let out = dirs
        .probe("probe/nobody", "probe/web", 80)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no pod probe/nobody"), "{stderr}");

    // A service port it does not have, named with the ones it has.
    let out = dirs
        .probe("probe/client", "probe/web-svc", 80)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("service probe/web-svc has no port TCP/80 (it has TCP/8080)"),
        "{stderr}"
    );
}
