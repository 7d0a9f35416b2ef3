//! Measured, not asserted, so not part of the suite: run it with
//! `cargo test --release -p portcullis --test kube_update_latency -- --ignored --nocapture`.
//!
//! A real kube-apiserver (scripts/kube-test-cluster) holds 10k pods (with addresses) and 1k egress
//! policies of 20 ipBlocks each; the real `portcullis gateway --kubeconfig` daemon enforces them on
//! two veths; server and daemon run in a throw-away network namespace. 100 times, one policy's
//! ipBlock is changed through the API; the time from the API call to the daemon having switched to
//! the generation with the change in its maps (its published state) is recorded, with the daemon's
//! own breakdown (watch event to generation in force, compile, delta write) from its log, and its
//! memory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis_testkit::{not_root, sh, NetNs};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const APPS: usize = 100;
const BLOCKS: usize = 20;
const CHANGES: usize = 100;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// etcd + kube-apiserver on loopback, stopped on drop (also when the test panics).
struct Cluster(tempfile::TempDir);

impl Cluster {
    fn start() -> Cluster {
        let cluster = Cluster(
            tempfile::Builder::new()
                .prefix("portcullis-kube-lat-")
                .tempdir()
                .unwrap(),
        );
        let status = Command::new(repo().join("scripts/kube-test-cluster"))
            .arg("start")
            .arg(cluster.0.path())
            .status()
            .expect("scripts/kube-test-cluster runs");
        assert!(status.success(), "starting the test API server failed");
        cluster
    }

    fn kubeconfig(&self) -> PathBuf {
        self.0.path().join("kubeconfig")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/kube-test-cluster"))
            .arg("stop")
            .arg(self.0.path())
            .status();
    }
}

/// The daemon, stopped (SIGTERM, then its `--unpin-on-exit` cleans the pins) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The egress rules of policy `i`, version `version`: 20 /24 ipBlocks with a /29 except each and
/// TCP 443; the version moves the first block.
fn egress(i: usize, version: usize) -> serde_json::Value {
    let blocks: Vec<serde_json::Value> = (0..BLOCKS)
        .map(|b| {
            let (a, c) = (11 + (i * BLOCKS + b) % 100, (i * 7 + b * 13) % 256);
            let third = if b == 0 { version % 256 } else { b };
            serde_json::json!({"ipBlock": {
                "cidr": format!("{a}.{c}.{third}.0/24"),
                "except": [format!("{a}.{c}.{third}.0/29")],
            }})
        })
        .collect();
    serde_json::json!([{ "to": blocks, "ports": [{"protocol": "TCP", "port": 443}] }])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

fn published(state_dir: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(state_dir.join("state.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (
        v["applied_unix_ms"].as_u64().unwrap_or(0),
        v["generation"].as_u64().unwrap_or(0),
    )
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// The value of `key=` in a log line (tracing's format, colour codes removed).
fn field(line: &str, key: &str) -> Option<f64> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip an escape sequence up to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let start = plain.find(&format!(" {key}="))? + key.len() + 2;
    plain[start..].split_whitespace().next()?.parse().ok()
}

#[test]
#[ignore = "benchmark: run explicitly (see the file's docs)"]
fn policy_change_to_enforced_latency_at_10k_pods_1k_policies() {
    if not_root() {
        return;
    }
    // Everything runs inside the namespace (the API server on its loopback, the daemon on its
    // veths); it and all it holds are removed on the way out, also on panic.
    let ns = NetNs::new("kubelat");
    let ns_name = ns.name.clone();
    ns.run(move || {
        let cluster = Cluster::start();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime.block_on(portcullis_watcher::client_from_kubeconfig(Some(
            &cluster.kubeconfig(),
        )));
        let client = client.expect("client for the test API server");
        let t = Instant::now();
        runtime.block_on(async {
            let ns: core::Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bench", "labels": {"kubernetes.io/metadata.name": "bench"}}
            }))
            .unwrap();
            Api::<core::Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
            let pods: Api<core::Pod> = Api::namespaced(client.clone(), "bench");
            futures::stream::iter(0..PODS)
                .map(|i| {
                    let pods = pods.clone();
                    async move {
                        let pod: core::Pod = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("pod-{i}"), "labels": {"app": format!("app-{}", i % APPS)}},
                            "spec": {"containers": [{"name": "c", "image": "x"}]},
                        }))
                        .unwrap();
                        pods.create(&PostParams::default(), &pod).await.unwrap();
                        let ip = format!("10.244.{}.{}", (i + 1) >> 8, (i + 1) & 255);
                        let status = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
                        pods.patch_status(&format!("pod-{i}"), &PatchParams::default(), &Patch::Merge(status))
                            .await
                            .unwrap();
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
            let policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "bench");
            futures::stream::iter(0..POLICIES)
                .map(|i| {
                    let policies = policies.clone();
                    async move {
                        let policy: net::NetworkPolicy = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("egress-{i}")},
                            "spec": {
                                "podSelector": {"matchLabels": {"app": format!("app-{}", i % APPS)}},
                                "policyTypes": ["Egress"],
                                "egress": egress(i, 0),
                            },
                        }))
                        .unwrap();
                        policies.create(&PostParams::default(), &policy).await.unwrap();
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        });
        println!(
            "created {PODS} pods and {POLICIES} policies in {:?}",
            t.elapsed()
        );

        sh("ip link add cl type veth peer name clp && ip link add ex type veth peer name exp && \
            for i in cl clp ex exp; do ip link set $i up; done");
        let work = tempfile::tempdir().unwrap();
        let state_dir = work.path().join("state");
        let pins = PathBuf::from(format!("/sys/fs/bpf/{ns_name}"));
        let t = Instant::now();
        let mut child = Command::new(BIN)
            .args([
                "gateway",
                "--cluster-iface",
                "cl",
                "--external-iface",
                "ex",
                "--unpin-on-exit",
            ])
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .arg("--pin-dir")
            .arg(&pins)
            .arg("--state-dir")
            .arg(&state_dir)
            .env("PORTCULLIS_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway daemon");
        let log = BufReader::new(child.stderr.take().unwrap());
        let mut daemon = Daemon(child);
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        while published(&state_dir).0 == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the daemon never applied the initial state"
            );
            if let Ok(Some(status)) = daemon.0.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                let log: Vec<String> = lines_rx.try_iter().collect();
                panic!("the daemon exited: {status}\n{}", log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "daemon: first full list, compile and apply in {:?}",
            t.elapsed()
        );
        let pid = daemon.0.id();
        let rss_ready = rss_mib(pid);

        let policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "bench");
        let mut latencies = Vec::new();
        for k in 0..CHANGES {
            let i = k * 37 % POLICIES;
            let before = published(&state_dir);
            let start = unix_ms();
            runtime
                .block_on(policies.patch(
                    &format!("egress-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"egress": egress(i, k + 1)}})),
                ))
                .expect("patch");
            let deadline = Instant::now() + Duration::from_secs(20);
            let applied = loop {
                let now = published(&state_dir);
                if now.1 != before.1 && now.0 != before.0 {
                    break now.0;
                }
                assert!(Instant::now() < deadline, "change {k} never applied");
                std::thread::sleep(Duration::from_millis(1));
            };
            latencies.push(applied as f64 - start);
            std::thread::sleep(Duration::from_millis(150));
        }
        let rss_after = rss_mib(pid);
        drop(daemon);

        let (mut total, mut compile, mut write, mut written) = (vec![], vec![], vec![], vec![]);
        for line in lines_rx.try_iter() {
            if line.contains("policy generation in force") {
                total.extend(field(&line, "total_ms"));
            } else if line.contains("gateway tables written") {
                compile.extend(field(&line, "compile_ms"));
                write.extend(field(&line, "write_ms"));
                written.extend(field(&line, "written"));
            }
        }
        // The first entries are the initial full apply.
        for v in [&mut total, &mut compile, &mut write, &mut written] {
            if !v.is_empty() {
                v.remove(0);
            }
            v.sort_by(f64::total_cmp);
        }
        latencies.sort_by(f64::total_cmp);
        let show = |name: &str, v: &[f64]| {
            if !v.is_empty() {
                println!(
                    "{name}: p50 {:.1} p99 {:.1} max {:.1} (n={})",
                    percentile(v, 0.5),
                    percentile(v, 0.99),
                    v[v.len() - 1],
                    v.len()
                );
            }
        };
        show("API call -> generation in force (ms)", &latencies);
        show(
            "daemon: watch event -> generation in force (ms)",
            &total,
        );
        show("daemon: compile (ms)", &compile);
        show("daemon: delta write + switch (ms)", &write);
        show("daemon: map entries written per change", &written);
        println!("daemon RSS: {rss_ready} MiB when ready, {rss_after} MiB after {CHANGES} changes");
    });
}
