//! A real kube-apiserver (1.20, built from Debian's source package by `scripts/kube-test-cluster`)
//! with etcd on loopback, stopped when the guard is dropped (also on panic). A machine where the
//! build or the start fails makes the test fail loudly: nothing is skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Client;
use portcullis_watcher::State;
use tokio::sync::watch;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-test-cluster")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/kube-test-cluster: {e}"));
    assert!(
        out.status.success(),
        "scripts/kube-test-cluster {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    /// Builds the binaries if needed (once per machine; concurrent callers wait on a lock), then
    /// starts etcd and kube-apiserver (and the namespace controller if asked).
    pub fn start(controller_manager: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-kube-")
            .tempdir()
            .unwrap();
        let cluster = Cluster {
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
        };
        let t = Instant::now();
        let path = cluster.dir.path().to_str().unwrap().to_string();
        let mut args = vec!["start", path.as_str()];
        if controller_manager {
            args.push("--controller-manager");
        }
        run(&args);
        println!("cluster up in {:?}", t.elapsed());
        cluster
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn stop_apiserver(&self) {
        run(&["stop-apiserver", self.dir.path().to_str().unwrap()]);
    }

    pub fn start_apiserver(&self) {
        run(&["start-apiserver", self.dir.path().to_str().unwrap()]);
    }

    /// Advances etcd's revision behind the apiserver's back (see the script).
    pub fn etcd_bump(&self) {
        run(&["etcd-bump", self.dir.path().to_str().unwrap()]);
    }

    pub async fn admin(&self) -> Client {
        portcullis_watcher::client_from_kubeconfig(Some(&self.kubeconfig))
            .await
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn wait_for(
    rx: &mut watch::Receiver<State>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&State) -> bool,
) -> State {
    let deadline = Instant::now() + limit;
    loop {
        {
            let state = rx.borrow_and_update();
            if pred(&state) {
                return state.clone();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, rx.changed()).await.is_err() {
            let s = rx.borrow();
            panic!(
                "timed out after {limit:?} waiting for {what}; last state: revision {} ready {} stale {} policies {:?} pods {:?} namespaces {:?} errors {:?}",
                s.revision,
                s.source_ready,
                s.stale,
                s.snapshot.policies.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>(),
                s.snapshot.pods.iter().map(|p| format!("{}/{} {:?}", p.namespace, p.name, p.ips)).collect::<Vec<_>>(),
                s.snapshot.namespaces.keys().collect::<Vec<_>>(),
                s.errors
            );
        }
    }
}

pub fn has_policy(state: &State, ns: &str, name: &str) -> bool {
    state
        .snapshot
        .policies
        .iter()
        .any(|p| p.namespace == ns && p.name == name)
}

pub fn pod_of<'a>(
    state: &'a State,
    ns: &str,
    name: &str,
) -> Option<&'a portcullis_policy::model::Pod> {
    state
        .snapshot
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
}

pub fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: if labels.is_empty() {
            None
        } else {
            Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        },
        ..Default::default()
    }
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> core::Namespace {
    core::Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> core::Pod {
    core::Pod {
        metadata: meta(Some(ns), name, labels),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: "c".into(),
                image: Some("registry.invalid/none".into()),
                ports: Some(vec![core::ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

pub fn policy(ns: &str, name: &str, select: &[(&str, &str)]) -> net::NetworkPolicy {
    net::NetworkPolicy {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(
                    select
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![net::NetworkPolicyIngressRule::default()]),
            ..Default::default()
        }),
    }
}

/// Resident set size of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
