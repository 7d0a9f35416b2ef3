//! `monitor --type verdict` on real lab traffic (root, kernel): an allowed and a denied new flow,
//! on the gateway and on a node hook, each a record with the 5-tuple, the pods on both sides, the
//! verdict, the policies of the deciding group and, for the allowed one, the rule (policy and
//! index) computed from `--manifests`.

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use portcullis_lab::{Lab, LabOptions, Verdict};
use portcullis_policy::load::load_sources;
use portcullis_policy::probe::parse_probes;
use serde_json::Value;

#[path = "support/applied.rs"]
mod applied;
#[path = "support/dirs.rs"]
mod dirs;
use applied::wait_until_applied;
use dirs::DaemonDirs;

/// x/a may reach 192.168.1.0/24 except 192.168.1.10 (egress rule 0); x/a accepts x/b on TCP 443
/// (ingress rule 1; rule 0 admits nobody of the lab).
const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-lan, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 192.168.1.0/24, except: [192.168.1.10/32]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: nobody}}
  - from:
    - podSelector: {matchLabels: {pod: b}}
    ports:
    - {protocol: TCP, port: 443}
";

/// The directories of run `tag`, with the example cluster and [`POLICIES`] as its manifests.
fn run_dirs(tag: &str) -> DaemonDirs {
    let dirs = DaemonDirs::new(tag);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(
        repo.join("configs/examples/cluster.yaml"),
        dirs.manifests.join("cluster.yaml"),
    )
    .unwrap();
    std::fs::write(dirs.manifests.join("policy.yaml"), POLICIES).unwrap();
    dirs
}

/// The lab for `probes` (JSON lines of probe specs), with the example cluster.
fn lab(dirs: &DaemonDirs, probes: &str) -> (Lab, Vec<portcullis_policy::probe::Probe>) {
    let probes = parse_probes(probes).unwrap();
    let cluster = std::fs::read_to_string(dirs.manifests.join("cluster.yaml")).unwrap();
    let snapshot = load_sources([("cluster.yaml", cluster.as_str())]).snapshot;
    // The default timeout and retry: an allowed probe must not fail for a slow first packet.
    let options = LabOptions::default();
    (Lab::build(&snapshot, &probes, options).unwrap(), probes)
}

/// Runs `monitor --type verdict --output json --manifests ...` (`extra`: `--node`) in `netns`
/// while the probes run (each must get its expected verdict), and returns its records.
fn verdict_records(
    lab: &mut Lab,
    dirs: &DaemonDirs,
    netns: &str,
    extra: &[&str],
    probes: &[(portcullis_policy::probe::Probe, Verdict)],
) -> Vec<Value> {
    let mut args = vec!["monitor", "--type", "verdict", "--output", "json"];
    args.extend_from_slice(&["--duration", "6s"]);
    args.extend_from_slice(extra);
    let mut monitor = dirs.tool(&args);
    monitor
        .arg("--manifests")
        .arg(&dirs.manifests)
        .stdout(Stdio::piped());
    let monitor = lab.spawn_in(netns, monitor).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for (probe, expected) in probes {
        assert_eq!(lab.probe(probe).unwrap().verdict, *expected, "{probe:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while monitor.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "monitor did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    monitor.with(|c| c.stdout.take().unwrap().read_to_string(&mut out).unwrap());
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The first record to `dst`:`port`.
fn record_to<'a>(records: &'a [Value], dst: &str, port: u16) -> &'a Value {
    records
        .iter()
        .find(|r| r["dst"] == dst && r["dst_port"] == port)
        .unwrap_or_else(|| panic!("no record to {dst}:{port} in {records:#?}"))
}

#[test]
fn verdict_records_on_the_gateway_name_the_policy_and_rule() {
    gateway_records("xdp");
}

/// The same with the AF_XDP engine judging: its records reach `monitor` through the daemon's
/// event file.
#[test]
fn verdict_records_of_the_af_xdp_engine_name_the_policy_and_rule() {
    gateway_records("afxdp");
}

fn gateway_records(datapath: &str) {
    let dirs = run_dirs(&format!("verdict-gw-{datapath}"));
    let (mut lab, probes) = lab(
        &dirs,
        r#"- {"from": "x/a", "to": "192.168.1.20", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "192.168.1.10", "port": 443, "protocol": "TCP"}"#,
    );
    let legs = lab.gateway().clone();
    let mut gateway = dirs.daemon(&["gateway", "--datapath", datapath]);
    gateway.args(legs.leg_args());
    let gateway = lab.spawn_in(&legs.netns, gateway).unwrap();
    wait_until_applied(&gateway, "gateway", &dirs.state_dir);
    let runs = [
        (probes[0].clone(), Verdict::Allow),
        (probes[1].clone(), Verdict::Deny),
    ];
    let records = verdict_records(&mut lab, &dirs, &legs.netns, &[], &runs);

    let allowed = record_to(&records, "192.168.1.20", 443);
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert_eq!(allowed["src"], "10.244.7.10");
    assert_eq!(allowed["src_pod"], "x/a");
    assert_eq!(allowed["dst_pod"], Value::Null);
    assert_eq!(allowed["protocol"], "TCP");
    assert_eq!(allowed["iface"], "cluster");
    assert_eq!(allowed["sides"][0], "egress-of-source");
    assert_eq!(allowed["admitted_by"], "policy");
    assert_eq!(allowed["policies"][0], "x/egress-lan");
    assert_eq!(allowed["rules"][0]["policy"], "x/egress-lan", "{allowed}");
    assert_eq!(allowed["rules"][0]["index"], 0);
    let denied = record_to(&records, "192.168.1.10", 443);
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert_eq!(denied["src_pod"], "x/a");
    assert_eq!(denied["reason"], "policy");
    assert_eq!(denied["policies"][0], "x/egress-lan");

    // `--summary`: one line per (source, destination, port, protocol, verdict) and window.
    let summary = ["--summary", "--window", "2s"];
    let lines = verdict_records(&mut lab, &dirs, &legs.netns, &summary, &runs);
    for (dst, verdict) in [("192.168.1.20", "allow"), ("192.168.1.10", "deny")] {
        let line = lines
            .iter()
            .find(|l| l["dst"] == dst && l["verdict"] == verdict)
            .unwrap_or_else(|| panic!("no {verdict} summary to {dst} in {lines:#?}"));
        assert_eq!(line["src"], "x/a", "{line}");
        assert_eq!(line["dst_port"], 443);
        assert_eq!(line["protocol"], "TCP");
        assert_eq!(line["policies"][0], "x/egress-lan");
        assert!(line["flows"].as_u64().unwrap() >= 1, "{line}");
    }
    gateway.kill().unwrap();
    lab.teardown().unwrap();
}

#[test]
fn verdict_records_on_a_node_hook_name_the_policy_and_rule() {
    let dirs = run_dirs("verdict-node");
    let (mut lab, probes) = lab(
        &dirs,
        r#"- {"from": "x/b", "to": "x/a", "port": 443, "protocol": "TCP"}
- {"from": "x/a", "to": "x/b", "port": 443, "protocol": "TCP"}"#,
    );
    let netns = lab.nodes()[0].netns.clone();
    let node = lab
        .spawn_in(&netns, dirs.daemon(&["node", "--unpin-on-exit"]))
        .unwrap();
    wait_until_applied(&node, "node daemon", &dirs.state_dir);
    let runs = [
        (probes[0].clone(), Verdict::Allow),
        (probes[1].clone(), Verdict::Deny),
    ];
    let records = verdict_records(&mut lab, &dirs, &netns, &["--node"], &runs);

    let allowed = record_to(&records, "10.244.7.10", 443);
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert_eq!(allowed["src_pod"], "x/b");
    assert_eq!(allowed["dst_pod"], "x/a");
    assert_eq!(allowed["admitted_by"], "policy");
    assert_eq!(allowed["policies"][0], "x/a-in");
    assert_eq!(allowed["rules"][0]["policy"], "x/a-in", "{allowed}");
    assert_eq!(allowed["rules"][0]["direction"], "ingress");
    assert_eq!(allowed["rules"][0]["index"], 1);
    let denied = record_to(&records, "10.244.7.20", 443);
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert_eq!(
        (&denied["src_pod"], &denied["dst_pod"]),
        (&"x/a".into(), &"x/b".into())
    );
    assert_eq!(denied["policies"][0], "x/egress-lan");
    node.kill().unwrap();
    lab.teardown().unwrap();
}
