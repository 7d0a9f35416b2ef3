//! Measured, not asserted (beyond correctness): event-to-publish latency of single-policy changes
//! with 10k pods and 1k policies loaded from a real kube-apiserver, and the watcher's memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis_watcher::{KubeOptions, KubeSource};

const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const NAMESPACES: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_memory_at_10k_pods_1k_policies() {
    init_tracing();
    let cluster = Cluster::start(false);
    let client = cluster.admin().await;
    let pp = PostParams::default();
    let t = Instant::now();
    for n in 0..NAMESPACES {
        Api::<core::Namespace>::all(client.clone())
            .create(
                &pp,
                &namespace(&format!("ns{n}"), &[("team", &format!("t{n}"))]),
            )
            .await
            .unwrap();
    }
    futures::stream::iter(0..PODS)
        .map(|i| {
            let client = client.clone();
            async move {
                let ns = format!("ns{}", i % NAMESPACES);
                let name = format!("pod{i}");
                let pods: Api<core::Pod> = Api::namespaced(client, &ns);
                let app = format!("a{}", i % 100);
                pods.create(&PostParams::default(), &pod(&ns, &name, &[("app", &app)]))
                    .await
                    .unwrap();
                let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
                pods.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status":{"podIP":ip,"podIPs":[{"ip":ip}]}})),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    futures::stream::iter(0..POLICIES)
        .map(|i| {
            let client = client.clone();
            async move {
                let ns = format!("ns{}", i % NAMESPACES);
                let app = format!("a{}", i % 100);
                Api::<net::NetworkPolicy>::namespaced(client, &ns)
                    .create(
                        &PostParams::default(),
                        &policy(&ns, &format!("np{i}"), &[("app", &app)]),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "created {PODS} pods (with addresses) and {POLICIES} policies in {:?}",
        t.elapsed()
    );

    let rss_before = rss_kib();
    let t = Instant::now();
    let source = KubeSource::connect(Some(&cluster.kubeconfig), KubeOptions::default())
        .await
        .unwrap();
    let mut rx = source.subscribe();
    let ready = wait_for(&mut rx, Duration::from_secs(120), "ready", |s| {
        s.source_ready
    })
    .await;
    let list_time = t.elapsed();
    assert_eq!(ready.snapshot.pods.len(), PODS);
    assert_eq!(ready.snapshot.policies.len(), POLICIES);
    assert!(ready.snapshot.pods.iter().all(|p| p.ips.len() == 1));
    assert!(ready.errors.is_empty());
    let rss_ready = rss_kib();

    let mut end_to_end = Vec::new();
    let mut internal = Vec::new();
    for k in 0..60usize {
        let i = k * 7 % POLICIES;
        let ns = format!("ns{}", i % NAMESPACES);
        let label = format!("changed{k}");
        let needle = format!("{label:?}");
        let name = format!("np{i}");
        let api: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let t = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec":{"podSelector":{"matchLabels":{"app":label}}}}),
            ),
        )
        .await
        .unwrap();
        let s = wait_for(&mut rx, Duration::from_secs(20), "policy change", |s| {
            s.snapshot
                .policies
                .iter()
                .any(|p| p.name == name && format!("{:?}", p.pod_selector).contains(&needle))
        })
        .await;
        end_to_end.push(t.elapsed());
        internal.push(s.published_at.saturating_duration_since(s.changed_at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    end_to_end.sort();
    internal.sort();
    let rss_after = rss_kib();
    println!("watcher first full list ({PODS} pods, {POLICIES} policies, {NAMESPACES} namespaces) to ready: {list_time:?}");
    println!(
        "single-policy change, API call to published snapshot: p50 {:?} p99 {:?} (max {:?})",
        percentile(&end_to_end, 0.5),
        percentile(&end_to_end, 0.99),
        end_to_end.last().unwrap()
    );
    println!(
        "single-policy change, watch event to publish (incl. 100 ms coalescing window): p50 {:?} p99 {:?}",
        percentile(&internal, 0.5),
        percentile(&internal, 0.99)
    );
    println!(
        "test process RSS: before watcher {} MiB, at ready {} MiB, after changes {} MiB (watcher + snapshot ~ {} MiB)",
        rss_before / 1024,
        rss_ready / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024
    );
}
