//! The Kubernetes source against a real kube-apiserver 1.20 + etcd on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::api::rbac::v1 as rbac;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use portcullis_watcher::{load_from_kube, KubeOptions, KubeSource};
use serde::Deserialize;

const LIMIT: Duration = Duration::from_secs(20);

fn options() -> KubeOptions {
    KubeOptions {
        coalesce: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(4),
        ..KubeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sees_every_change_and_nothing_before_the_full_list() {
    init_tracing();
    let cluster = Cluster::start(true);
    let client = cluster.admin().await;
    let pp = PostParams::default();
    let namespaces: Api<core::Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &namespace("pre", &[("team", "x")]))
        .await
        .unwrap();
    let pre_pods: Api<core::Pod> = Api::namespaced(client.clone(), "pre");
    pre_pods
        .create(&pp, &pod("pre", "old", &[("app", "old")]))
        .await
        .unwrap();
    let pre_policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "pre");
    pre_policies
        .create(&pp, &policy("pre", "old", &[("app", "old")]))
        .await
        .unwrap();

    let source = KubeSource::connect(Some(&cluster.kubeconfig), options())
        .await
        .unwrap();
    let mut rx = source.subscribe();
    // Record every publish: none may be ready-less after the initial value.
    let mut recorder = source.subscribe();
    let history = tokio::spawn(async move {
        let mut seen = Vec::new();
        while recorder.changed().await.is_ok() {
            let s = recorder.borrow_and_update().clone();
            seen.push((s.revision, s.source_ready));
        }
        seen
    });
    let t = Instant::now();
    let first = wait_for(&mut rx, LIMIT, "ready", |s| s.source_ready).await;
    println!("first full list published after {:?}", t.elapsed());
    assert_eq!(first.revision, 1, "the first publish is the complete one");
    assert!(has_policy(&first, "pre", "old"));
    assert!(pod_of(&first, "pre", "old").is_some());
    // 1.20 does not add kubernetes.io/metadata.name; the builder does.
    assert_eq!(
        first.snapshot.namespaces["pre"]
            .labels
            .get("kubernetes.io/metadata.name"),
        Some(&"pre".to_string())
    );
    assert_eq!(
        first.snapshot.namespaces["pre"].labels.get("team"),
        Some(&"x".to_string())
    );

    let timed = |what: &str, t: Instant| println!("{what}: seen after {:?}", t.elapsed());

    // Namespace create and label update.
    let t = Instant::now();
    namespaces
        .create(&pp, &namespace("app", &[("team", "a")]))
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "namespace app", |s| {
        s.snapshot.namespaces.contains_key("app")
    })
    .await;
    timed("namespace create", t);
    let t = Instant::now();
    namespaces
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata":{"labels":{"team":"b"}}})),
        )
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "namespace label b", |s| {
        s.snapshot
            .namespaces
            .get("app")
            .is_some_and(|n| n.labels.get("team").map(String::as_str) == Some("b"))
    })
    .await;
    timed("namespace label update", t);

    // A pod without an address, then its address through the status subresource.
    let pods: Api<core::Pod> = Api::namespaced(client.clone(), "app");
    let t = Instant::now();
    pods.create(&pp, &pod("app", "web", &[("app", "web")]))
        .await
        .unwrap();
    let s = wait_for(&mut rx, LIMIT, "pod web", |s| {
        pod_of(s, "app", "web").is_some()
    })
    .await;
    assert!(pod_of(&s, "app", "web").unwrap().ips.is_empty());
    timed("pod create", t);
    let t = Instant::now();
    pods.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status":{"podIP":"10.1.0.5",
            "podIPs":[{"ip":"10.1.0.5"},{"ip":"fd00::5"}]}})),
    )
    .await
    .unwrap();
    let s = wait_for(&mut rx, LIMIT, "pod web addresses", |s| {
        pod_of(s, "app", "web").is_some_and(|p| p.ips.len() == 2)
    })
    .await;
    assert_eq!(
        pod_of(&s, "app", "web").unwrap().ips[0],
        "10.1.0.5".parse::<std::net::IpAddr>().unwrap()
    );
    timed("pod status update", t);

    // hostNetwork pods are kept (marked) so the model never selects them.
    let mut host = pod("app", "host", &[("app", "web")]);
    host.spec.as_mut().unwrap().host_network = Some(true);
    pods.create(&pp, &host).await.unwrap();
    let s = wait_for(&mut rx, LIMIT, "host pod", |s| {
        pod_of(s, "app", "host").is_some()
    })
    .await;
    assert!(pod_of(&s, "app", "host").unwrap().host_network);

    // Policy create, update, delete.
    let policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "app");
    let t = Instant::now();
    policies
        .create(&pp, &policy("app", "web-in", &[("app", "web")]))
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "policy web-in", |s| {
        has_policy(s, "app", "web-in")
    })
    .await;
    timed("policy create", t);
    let t = Instant::now();
    policies
        .patch(
            "web-in",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec":{"podSelector":{"matchLabels":{"app":"db"}}}})),
        )
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "policy web-in updated", |s| {
        s.snapshot
            .policies
            .iter()
            .any(|p| p.name == "web-in" && format!("{:?}", p.pod_selector).contains("\"db\""))
    })
    .await;
    timed("policy update", t);
    let t = Instant::now();
    policies
        .delete("web-in", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "policy web-in deleted", |s| {
        !has_policy(s, "app", "web-in")
    })
    .await;
    timed("policy delete", t);

    // A pod bound to a node stays Terminating (no kubelet here): it must count as gone.
    let mut bound = pod("app", "bound", &[("app", "web")]);
    bound.spec.as_mut().unwrap().node_name = Some("node-1".into());
    pods.create(&pp, &bound).await.unwrap();
    wait_for(&mut rx, LIMIT, "pod bound", |s| {
        pod_of(s, "app", "bound").is_some()
    })
    .await;
    pods.delete("bound", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "terminating pod gone", |s| {
        pod_of(s, "app", "bound").is_none()
    })
    .await;
    let still = pods.get("bound").await.unwrap();
    assert!(
        still.metadata.deletion_timestamp.is_some(),
        "the API still has it, terminating"
    );
    // An unbound pod is deleted at once.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for(&mut rx, LIMIT, "pod web gone", |s| {
        pod_of(s, "app", "web").is_none()
    })
    .await;

    // Namespace deletion (the namespace controller finishes it).
    let t = Instant::now();
    namespaces
        .delete("pre", &DeleteParams::default())
        .await
        .unwrap();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(60),
        "namespace pre gone",
        |s| !s.snapshot.namespaces.contains_key("pre") && !has_policy(s, "pre", "old"),
    )
    .await;
    timed("namespace delete (controller)", t);
    assert!(pod_of(&s, "pre", "old").is_none());
    assert!(!s.stale);
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    drop(source);
    let seen = history.await.unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|(_, ready)| *ready),
        "a publish before the full list: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_keeps_state_and_reconciles() {
    init_tracing();
    let cluster = Cluster::start(false);
    let client = cluster.admin().await;
    let pp = PostParams::default();
    Api::<core::Namespace>::all(client.clone())
        .create(&pp, &namespace("app", &[]))
        .await
        .unwrap();
    let policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "app");
    for name in ["p1", "p2"] {
        policies
            .create(&pp, &policy("app", name, &[("app", name)]))
            .await
            .unwrap();
    }
    let source = KubeSource::connect(
        Some(&cluster.kubeconfig),
        // Backoffs far longer than the wait below: only the reachability probe can make the
        // watcher catch up in time once the server is back.
        KubeOptions {
            backoff_initial: Duration::from_secs(40),
            backoff_max: Duration::from_secs(60),
            ..options()
        },
    )
    .await
    .unwrap();
    let mut rx = source.subscribe();
    let good = wait_for(&mut rx, LIMIT, "ready", |s| {
        s.source_ready && has_policy(s, "app", "p2")
    })
    .await;

    cluster.stop_apiserver();
    let t = Instant::now();
    let stale = wait_for(&mut rx, LIMIT, "stale", |s| s.stale).await;
    println!("stale after {:?}", t.elapsed());
    assert!(std::sync::Arc::ptr_eq(&stale.snapshot, &good.snapshot));
    // Let the watcher fail a few times so it is in a long backoff when the server returns.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rx.borrow().stale);
    assert!(
        has_policy(&rx.borrow(), "app", "p2"),
        "last good state kept"
    );

    // etcd moves on while the apiserver is down: the restarted apiserver's watch cache starts
    // past the watcher's resourceVersion, so resuming gets 410 Gone and the watcher must relist.
    cluster.etcd_bump();
    cluster.start_apiserver();
    let t = Instant::now();
    // Changes made while the watcher is still backing off.
    policies
        .delete("p2", &DeleteParams::default())
        .await
        .unwrap();
    policies
        .create(&pp, &policy("app", "p3", &[("app", "p3")]))
        .await
        .unwrap();
    let s = wait_for(&mut rx, Duration::from_secs(15), "reconciled", |s| {
        !s.stale && !has_policy(s, "app", "p2") && has_policy(s, "app", "p3")
    })
    .await;
    assert!(has_policy(&s, "app", "p1"));
    let stats = source.stats();
    println!(
        "reconciled {:?} after restart; relists {}, reconnects {}",
        t.elapsed(),
        stats.relists.load(std::sync::atomic::Ordering::Relaxed),
        stats.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(stats.reconnects.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(
        stats.relists.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the resume should have been refused (410) and relisted"
    );
    // The watch works again after the relist.
    policies
        .create(&pp, &policy("app", "p4", &[("app", "p4")]))
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "p4", |s| has_policy(s, "app", "p4")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_updates_coalesces_to_the_final_state() {
    init_tracing();
    let cluster = Cluster::start(false);
    let client = cluster.admin().await;
    let pp = PostParams::default();
    Api::<core::Namespace>::all(client.clone())
        .create(&pp, &namespace("app", &[]))
        .await
        .unwrap();
    let policies: Api<net::NetworkPolicy> = Api::namespaced(client.clone(), "app");
    policies
        .create(&pp, &policy("app", "burst", &[("gen", "start")]))
        .await
        .unwrap();
    let source = KubeSource::connect(Some(&cluster.kubeconfig), options())
        .await
        .unwrap();
    let mut rx = source.subscribe();
    let ready = wait_for(&mut rx, LIMIT, "ready", |s| s.source_ready).await;
    let t = Instant::now();
    futures::stream::iter(0..1000)
        .map(|i| {
            let policies = policies.clone();
            async move {
                policies
                    .patch(
                        "burst",
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"spec":{"podSelector":{"matchLabels":{"gen":format!("g{i}")}}}})),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let sent = t.elapsed();
    let last = policies.get("burst").await.unwrap();
    let gen = last
        .spec
        .unwrap()
        .pod_selector
        .unwrap()
        .match_labels
        .unwrap()["gen"]
        .clone();
    let needle = format!("{gen:?}");
    let s = wait_for(&mut rx, LIMIT, "final generation", |s| {
        s.snapshot
            .policies
            .iter()
            .any(|p| p.name == "burst" && format!("{:?}", p.pod_selector).contains(&needle))
    })
    .await;
    let publishes = s.revision - ready.revision;
    println!(
        "1000 updates sent in {sent:?}; final state after {:?}; {publishes} publishes",
        t.elapsed()
    );
    assert_eq!(s.snapshot.policies.len(), 1);
    assert!(publishes < 1000, "not coalesced: {publishes} publishes");
    // Nothing else arrives afterwards that would change it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(format!("{:?}", rx.borrow().snapshot.policies[0].pod_selector).contains(&needle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_cluster_role_is_enough_and_read_only() {
    init_tracing();
    let cluster = Cluster::start(false);
    let admin = cluster.admin().await;
    let gateway_kc = cluster.path("gateway.kubeconfig");
    let node_kc = cluster.path("node.kubeconfig");

    // Before the RBAC manifest: the service-account users can read nothing.
    let err = load_from_kube(Some(&gateway_kc)).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");

    let pp = PostParams::default();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/deploy/base/rbac.yaml"),
    )
    .unwrap();
    let mut created = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "Namespace" => {
                let o: core::Namespace = serde_yaml_ng::from_value(value).unwrap();
                Api::<core::Namespace>::all(admin.clone())
                    .create(&pp, &o)
                    .await
                    .unwrap();
            }
            "ServiceAccount" => {
                let o: core::ServiceAccount = serde_yaml_ng::from_value(value).unwrap();
                let ns = o.metadata.namespace.clone().unwrap();
                Api::<core::ServiceAccount>::namespaced(admin.clone(), &ns)
                    .create(&pp, &o)
                    .await
                    .unwrap();
            }
            "ClusterRole" => {
                let o: rbac::ClusterRole = serde_yaml_ng::from_value(value).unwrap();
                for rule in o.rules.iter().flatten() {
                    assert_eq!(rule.verbs, ["get", "list", "watch"], "read-only role");
                }
                Api::<rbac::ClusterRole>::all(admin.clone())
                    .create(&pp, &o)
                    .await
                    .unwrap();
            }
            "ClusterRoleBinding" => {
                let o: rbac::ClusterRoleBinding = serde_yaml_ng::from_value(value).unwrap();
                Api::<rbac::ClusterRoleBinding>::all(admin.clone())
                    .create(&pp, &o)
                    .await
                    .unwrap();
            }
            other => panic!("unexpected kind {other} in configs/deploy/base/rbac.yaml"),
        }
        created.push(kind);
    }
    assert_eq!(
        created,
        [
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding"
        ]
    );
    Api::<core::Namespace>::all(admin.clone())
        .create(&pp, &namespace("app", &[]))
        .await
        .unwrap();
    Api::<net::NetworkPolicy>::namespaced(admin.clone(), "app")
        .create(&pp, &policy("app", "one", &[]))
        .await
        .unwrap();

    // RBAC changes reach the authorizer's cache within a moment.
    let deadline = Instant::now() + LIMIT;
    let loaded = loop {
        match load_from_kube(Some(&gateway_kc)).await {
            Ok(loaded) => break loaded,
            Err(e) if Instant::now() < deadline => {
                println!("not yet allowed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the shipped ClusterRole is not enough: {e}"),
        }
    };
    assert!(loaded.snapshot.policies.iter().any(|p| p.name == "one"));
    assert!(loaded.errors.is_empty());
    load_from_kube(Some(&node_kc)).await.unwrap();

    // list + watch as the gateway's service account.
    let source = KubeSource::connect(Some(&gateway_kc), options())
        .await
        .unwrap();
    let mut rx = source.subscribe();
    wait_for(&mut rx, LIMIT, "ready as gateway", |s| {
        s.source_ready && has_policy(s, "app", "one")
    })
    .await;
    Api::<net::NetworkPolicy>::namespaced(admin.clone(), "app")
        .create(&pp, &policy("app", "two", &[]))
        .await
        .unwrap();
    wait_for(&mut rx, LIMIT, "watch as gateway", |s| {
        has_policy(s, "app", "two")
    })
    .await;
    assert!(!rx.borrow().stale);

    // Writes and other resources are forbidden.
    let gw = portcullis_watcher::client_from_kubeconfig(Some(&gateway_kc))
        .await
        .unwrap();
    let forbidden = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403, got {other:?}"),
    };
    forbidden(
        Api::<net::NetworkPolicy>::namespaced(gw.clone(), "app")
            .create(&pp, &policy("app", "evil", &[]))
            .await
            .map(|_| ()),
    );
    forbidden(
        Api::<net::NetworkPolicy>::namespaced(gw.clone(), "app")
            .delete("one", &DeleteParams::default())
            .await
            .map(|_| ()),
    );
    forbidden(
        Api::<core::Pod>::namespaced(gw.clone(), "app")
            .create(&pp, &pod("app", "evil", &[]))
            .await
            .map(|_| ()),
    );
    forbidden(
        Api::<core::Secret>::all(gw.clone())
            .list(&Default::default())
            .await
            .map(|_| ()),
    );
}
