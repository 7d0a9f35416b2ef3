//! Measured, not asserted, so not part of the suite: run it with
//! `cargo test --release -p portcullis --test kube_update_latency -- --ignored --nocapture`.
//!
//! A real kube-apiserver (scripts/kube-test-cluster) holds 10k pods (with addresses) and 1k egress
//! policies of 20 ipBlocks each; the real `portcullis gateway --kubeconfig` daemon enforces them on
//! two veths and `portcullis node --kubeconfig` holds the node tables beside it; server and daemons
//! run in a throw-away network namespace. 100 times one policy's ipBlock is changed through the
//! API, then 50 times one pod is relabelled; for each, the time from the API call to each daemon
//! having switched to the generation with the change in its maps (its published state) is
//! recorded, with the daemons' own breakdown (watch event to generation in force, compile, delta
//! write, entries written, groups recompiled) from their logs, and their memory.

use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis_testkit::{require_root, sh, NetNs};

#[path = "support/kube_cluster.rs"]
#[allow(dead_code)] // the API server outage test uses the rest
mod kube_cluster;
use kube_cluster::{Cluster, KubeDaemon};

const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const APPS: usize = 100;
const BLOCKS: usize = 20;
const CHANGES: usize = 100;
const RELABELS: usize = 50;

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

fn show(name: &str, v: &[f64]) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if let Some(max) = v.last() {
        println!(
            "{name}: p50 {:.1} p99 {:.1} max {max:.1} (n={})",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.len()
        );
    }
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
    require_root();
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
        let t = Instant::now();
        let gateway = KubeDaemon::start(
            &["gateway", "--cluster-iface", "cl", "--external-iface", "ex"],
            &cluster.kubeconfig(),
            &work.path().join("gateway"),
            &format!("{ns_name}-gw"),
        );
        // No pod is scheduled on this node: the node hook compiles and writes the tables every
        // node holds (identities of all pods, every group) without attaching anywhere.
        let node = KubeDaemon::start(
            &["node", "--node", "bench-node"],
            &cluster.kubeconfig(),
            &work.path().join("node"),
            &format!("{ns_name}-node"),
        );
        for daemon in [&gateway, &node] {
            daemon.wait_applied(Duration::from_secs(300));
        }
        println!("both daemons: first full list, compile and apply in {:?}", t.elapsed());
        let rss_ready = [gateway.rss_mib(), node.rss_mib()];

        let policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "bench");
        let pods: Api<core::Pod> = Api::namespaced(client.clone(), "bench");
        let mut latencies = [Vec::new(), Vec::new()];
        for k in 0..CHANGES + RELABELS {
            let before = [gateway.published(), node.published()];
            let start = unix_ms();
            let change = if k < CHANGES {
                // One policy's first ipBlock moves.
                let i = k * 37 % POLICIES;
                let patch = serde_json::json!({"spec": {"egress": egress(i, k + 1)}});
                runtime
                    .block_on(policies.patch(&format!("egress-{i}"), &PatchParams::default(), &Patch::Merge(patch)))
                    .map(|_| ())
            } else {
                // One pod moves to another app (never its own: pod j starts in app j % APPS): other
                // policies select it, its identity changes.
                let j = k * 101 % PODS;
                let patch = serde_json::json!({"metadata": {"labels": {"app": format!("app-{}", (j + 1 + k % (APPS - 1)) % APPS)}}});
                runtime
                    .block_on(pods.patch(&format!("pod-{j}"), &PatchParams::default(), &Patch::Merge(patch)))
                    .map(|_| ())
            };
            change.expect("patch");
            let deadline = Instant::now() + Duration::from_secs(20);
            for (d, daemon) in [&gateway, &node].into_iter().enumerate() {
                let applied = loop {
                    let now = daemon.published();
                    if now.1 != before[d].1 && now.0 != before[d].0 {
                        break now.0;
                    }
                    assert!(Instant::now() < deadline, "change {k} never applied by daemon {d}");
                    std::thread::sleep(Duration::from_millis(1));
                };
                latencies[d].push(applied as f64 - start);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        let rss_after = [gateway.rss_mib(), node.rss_mib()];
        let logs = [gateway.stop(), node.stop()];

        for (d, name) in ["gateway", "node"].into_iter().enumerate() {
            let (mut total, mut compile, mut write, mut written, mut recompiled) =
                (vec![], vec![], vec![], vec![], vec![]);
            for line in &logs[d] {
                if line.contains("policy generation in force") {
                    total.extend(field(line, "total_ms"));
                } else if line.contains("tables written") {
                    compile.extend(field(line, "compile_ms"));
                    write.extend(field(line, "write_ms"));
                    written.extend(field(line, "written"));
                    recompiled.extend(field(line, "recompiled_groups"));
                }
            }
            println!("-- {name} daemon, {CHANGES} policy changes then {RELABELS} pod relabels");
            let api = &latencies[d];
            show("API call -> generation in force, policy change (ms)", &api[..CHANGES]);
            show("API call -> generation in force, pod relabel (ms)", &api[CHANGES..]);
            // The first apply of each log is the initial full one; then one apply per change, in
            // order. The delta of an apply spans two changes: the inactive generation holds the
            // tables of two applies ago.
            for (what, v) in [
                ("watch event -> generation in force (ms)", &mut total),
                ("compile (ms)", &mut compile),
                ("delta write + switch (ms)", &mut write),
                ("map entries written per apply", &mut written),
                ("groups recompiled per apply", &mut recompiled),
            ] {
                v.drain(..1.min(v.len()));
                let split = CHANGES.min(v.len());
                show(&format!("{what}, policy changes"), &v[..split]);
                show(&format!("{what}, pod relabels"), &v[split..]);
            }
            println!(
                "RSS: {} MiB when ready, {} MiB after the changes",
                rss_ready[d], rss_after[d]
            );
        }
    });
}
