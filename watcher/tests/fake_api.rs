//! Fault paths a real API server cannot produce on demand: `410 Gone` in the middle of a watch, an
//! undecodable event, a truncated list body, a stalled watch stream, a kind whose list is slow.
//! An in-process HTTP/1.1 server on 127.0.0.1 speaks the list/watch protocol with bodies serialised
//! from k8s-openapi types; the watcher must relist or reconnect and keep its last good state.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Client, Config};
use portcullis_watcher::{KubeOptions, KubeSource, State};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone)]
enum Step {
    Line(String),
    Sleep(Duration),
    /// Keep the connection open and silent.
    Hang,
}

#[derive(Clone)]
enum Reply {
    Body(u16, String),
    /// Claims the full length, sends only the first half, closes.
    Truncated(String),
    /// A body without length, written step by step, ended by closing the connection.
    Stream(Vec<Step>),
}

#[derive(Default)]
struct Script {
    /// Replies queued per (resource, is_watch); when empty, `default_list` / a hanging watch.
    queued: HashMap<(String, bool), VecDeque<Reply>>,
    default_list: HashMap<String, String>,
    /// Every request: (resource, is_watch, query).
    log: Vec<(String, bool, String)>,
}

struct Fake {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                tokio::spawn(handle(sock, s.clone()));
            }
        });
        let fake = Fake { url, script };
        // API discovery: no API group, so no EgressGateway CRD (the watcher never lists a kind
        // the server does not serve).
        fake.set_list(
            "apis",
            r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#.to_string(),
        );
        fake
    }

    fn queue(&self, resource: &str, watch: bool, reply: Reply) {
        self.script
            .lock()
            .unwrap()
            .queued
            .entry((resource.to_string(), watch))
            .or_default()
            .push_back(reply);
    }

    fn set_list(&self, resource: &str, body: String) {
        self.script
            .lock()
            .unwrap()
            .default_list
            .insert(resource.to_string(), body);
    }

    fn requests(&self, resource: &str, watch: bool) -> Vec<String> {
        self.script
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(r, w, _)| r == resource && *w == watch)
            .map(|(_, _, q)| q.clone())
            .collect()
    }

    fn source(&self, options: KubeOptions) -> KubeSource {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let config = Config::new(self.url.parse().unwrap());
        KubeSource::spawn(Client::try_from(config).unwrap(), options)
    }
}

async fn handle(mut sock: TcpStream, script: Arc<Mutex<Script>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let resource = path.rsplit('/').next().unwrap_or("").to_string();
    let is_watch = query.split('&').any(|kv| kv == "watch=true");
    let reply = {
        let mut s = script.lock().unwrap();
        s.log.push((resource.clone(), is_watch, query.to_string()));
        let queued = s
            .queued
            .get_mut(&(resource.clone(), is_watch))
            .and_then(|q| q.pop_front());
        match queued {
            Some(reply) => reply,
            None if is_watch => Reply::Stream(vec![Step::Hang]),
            None => match s.default_list.get(&resource) {
                Some(body) => Reply::Body(200, body.clone()),
                None => Reply::Body(404, status_json(404, "NotFound")),
            },
        }
    };
    let header = |code: u16, length: Option<usize>| {
        let mut h =
            format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nConnection: close\r\n");
        if let Some(n) = length {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    let _ = match reply {
        Reply::Body(code, body) => {
            sock.write_all(format!("{}{}", header(code, Some(body.len())), body).as_bytes())
                .await
        }
        Reply::Truncated(body) => {
            let half = &body.as_bytes()[..body.len() / 2];
            let _ = sock
                .write_all(header(200, Some(body.len())).as_bytes())
                .await;
            sock.write_all(half).await
        }
        Reply::Stream(steps) => {
            let _ = sock.write_all(header(200, None).as_bytes()).await;
            for step in steps {
                match step {
                    Step::Line(line) => {
                        if sock
                            .write_all(format!("{line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::Hang => {
                        // Silent until the client goes away.
                        let _ = sock.read(&mut chunk).await;
                        return;
                    }
                }
            }
            Ok(())
        }
    };
    let _ = sock.shutdown().await;
}

fn status_json(code: u16, reason: &str) -> String {
    serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message":reason,"reason":reason,"code":code})
    .to_string()
}

fn list_json<T: Serialize>(kind: &str, api_version: &str, items: &[T], rv: u64) -> String {
    serde_json::json!({"kind":kind,"apiVersion":api_version,
        "metadata":{"resourceVersion":rv.to_string()},"items":items})
    .to_string()
}

fn event<T: Serialize>(kind: &str, object: &T) -> String {
    serde_json::json!({"type":kind,"object":object}).to_string()
}

fn gone() -> String {
    serde_json::json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},
        "status":"Failure","message":"too old resource version","reason":"Expired","code":410}})
    .to_string()
}

fn meta(ns: Option<&str>, name: &str, rv: u64) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        resource_version: Some(rv.to_string()),
        ..Default::default()
    }
}

fn np(name: &str, rv: u64) -> net::NetworkPolicy {
    net::NetworkPolicy {
        metadata: meta(Some("app"), name, rv),
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        }),
    }
}

fn namespace(name: &str) -> core::Namespace {
    core::Namespace {
        metadata: meta(None, name, 1),
        ..Default::default()
    }
}

fn pod(name: &str, ip: &str) -> core::Pod {
    core::Pod {
        metadata: meta(Some("app"), name, 2),
        spec: Some(core::PodSpec::default()),
        status: Some(core::PodStatus {
            pod_ip: Some(ip.into()),
            ..Default::default()
        }),
    }
}

const NPS: &str = "networkpolicies";

fn basic(fake: &Fake, policies: &[net::NetworkPolicy]) {
    fake.set_list(
        "namespaces",
        list_json("NamespaceList", "v1", &[namespace("app")], 10),
    );
    fake.set_list(
        "pods",
        list_json("PodList", "v1", &[pod("web", "10.0.0.1")], 10),
    );
    fake.set_list(
        NPS,
        list_json("NetworkPolicyList", "networking.k8s.io/v1", policies, 10),
    );
}

fn options() -> KubeOptions {
    KubeOptions {
        coalesce: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        watch_timeout: Duration::from_secs(1),
        stall_timeout: Duration::from_secs(2),
        page_size: 500,
        // The fake serves no nodes nor EgressGateways (404): they are none.
        absent_retry: Duration::from_millis(500),
        reachability_probe: Duration::from_millis(100),
    }
}

fn names(state: &State) -> Vec<String> {
    let mut v: Vec<String> = state
        .snapshot
        .policies
        .iter()
        .map(|p| p.name.clone())
        .collect();
    v.sort();
    v
}

async fn wait_for(
    rx: &mut watch::Receiver<State>,
    what: &str,
    pred: impl Fn(&State) -> bool,
) -> State {
    common::wait_for(rx, Duration::from_secs(15), what, pred).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_mid_watch_relists_and_reconciles_deletions() {
    let fake = Fake::start().await;
    basic(&fake, &[np("a", 5), np("b", 6)]);
    // The first watch delivers c, then the history is gone; meanwhile b was deleted.
    fake.queue(
        NPS,
        true,
        Reply::Stream(vec![
            Step::Sleep(Duration::from_millis(300)),
            Step::Line(event("ADDED", &np("c", 11))),
            Step::Sleep(Duration::from_millis(300)),
            Step::Line(gone()),
        ]),
    );
    let source = fake.source(options());
    let mut rx = source.subscribe();
    let ready = wait_for(&mut rx, "ready", |s| s.source_ready).await;
    assert_eq!(names(&ready), ["a", "b"]);
    assert_eq!(ready.snapshot.pods.len(), 1);
    // After the first list the server's state changes: b deleted (no event), c added.
    fake.set_list(
        NPS,
        list_json(
            "NetworkPolicyList",
            "networking.k8s.io/v1",
            &[np("a", 5), np("c", 11)],
            20,
        ),
    );
    wait_for(&mut rx, "c", |s| names(s).contains(&"c".to_string())).await;
    let s = wait_for(&mut rx, "b reconciled away", |s| names(s) == ["a", "c"]).await;
    assert!(!s.stale);
    assert!(
        source
            .stats()
            .relists
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The watch resumed from the list's version, then from the relist's (its request may follow
    // the publish of the relisted state by a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    let watches = loop {
        let watches = fake.requests(NPS, true);
        if watches.iter().any(|q| q.contains("resourceVersion=20")) || Instant::now() > deadline {
            break watches;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(watches[0].contains("resourceVersion=10"), "{watches:?}");
    assert!(
        watches.iter().any(|q| q.contains("resourceVersion=20")),
        "{watches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_event_and_truncated_list_keep_last_good_state() {
    let fake = Fake::start().await;
    basic(&fake, &[np("a", 5)]);
    let source = fake.source(options());
    let mut rx = source.subscribe();
    fake.queue(
        NPS,
        true,
        Reply::Stream(vec![
            Step::Sleep(Duration::from_millis(300)),
            Step::Line(r#"{"type":"ADDED","object":{"metadata":{"name":5}}}"#.into()),
            Step::Hang,
        ]),
    );
    let good = wait_for(&mut rx, "ready", |s| s.source_ready).await;
    assert_eq!(names(&good), ["a"]);
    // The relist after the undecodable event gets a truncated body, twice; then a good one.
    let full = list_json(
        "NetworkPolicyList",
        "networking.k8s.io/v1",
        &[np("a", 5), np("d", 30)],
        30,
    );
    fake.queue(NPS, false, Reply::Truncated(full.clone()));
    fake.queue(NPS, false, Reply::Truncated(full.clone()));
    fake.queue(
        NPS,
        false,
        Reply::Stream(vec![
            Step::Sleep(Duration::from_millis(700)),
            Step::Line(full),
        ]),
    );
    let stale = wait_for(&mut rx, "stale", |s| s.stale).await;
    assert_eq!(names(&stale), ["a"], "last good state kept while stale");
    assert!(std::sync::Arc::ptr_eq(&stale.snapshot, &good.snapshot));
    let s = wait_for(&mut rx, "d", |s| names(s) == ["a", "d"]).await;
    assert!(!s.stale);
    assert!(fake.requests(NPS, false).len() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watch_is_reconnected_from_its_version() {
    let fake = Fake::start().await;
    basic(&fake, &[np("a", 5)]);
    // First watch: silent forever (the server ignores timeoutSeconds). Second: an event.
    fake.queue(NPS, true, Reply::Stream(vec![Step::Hang]));
    fake.queue(
        NPS,
        true,
        Reply::Stream(vec![
            Step::Line(event("ADDED", &np("e", 12))),
            Step::Line(event("DELETED", &np("a", 13))),
            Step::Line(
                serde_json::json!({"type":"BOOKMARK","object":{"kind":"NetworkPolicy",
                    "apiVersion":"networking.k8s.io/v1","metadata":{"resourceVersion":"50"}}})
                .to_string(),
            ),
            // The server ends the watch (its timeout): resume at once from the bookmark.
        ]),
    );
    let t = Instant::now();
    let source = fake.source(options());
    let mut rx = source.subscribe();
    wait_for(&mut rx, "ready", |s| s.source_ready).await;
    // Every kind's idle watch stalls and reconnects on its own schedule, so `stale` may be set
    // for a moment by another kind: wait until all are connected again.
    wait_for(&mut rx, "e, connected", |s| names(s) == ["e"] && !s.stale).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "stall timeout respected: {took:?}"
    );
    let watches = fake.requests(NPS, true);
    assert!(watches.len() >= 2);
    assert!(
        watches[1].contains("resourceVersion=10"),
        "resumed, not relisted: {watches:?}"
    );
    assert_eq!(fake.requests(NPS, false).len(), 1, "no relist needed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.requests(NPS, true).len() < 3 {
        assert!(Instant::now() < deadline, "no watch after the clean end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watches = fake.requests(NPS, true);
    assert!(
        watches[2].contains("resourceVersion=50")
            && watches[2].contains("allowWatchBookmarks=true"),
        "resumed from the bookmark: {watches:?}"
    );
    assert_eq!(
        fake.requests(NPS, false).len(),
        1,
        "no relist after a clean end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_ready_until_every_kind_is_listed() {
    let fake = Fake::start().await;
    basic(&fake, &[np("a", 5)]);
    // Namespaces: first an error, then a slow list.
    fake.queue(
        "namespaces",
        false,
        Reply::Body(500, status_json(500, "InternalError")),
    );
    fake.queue(
        "namespaces",
        false,
        Reply::Stream(vec![
            Step::Sleep(Duration::from_millis(1500)),
            Step::Line(list_json(
                "NamespaceList",
                "v1",
                &[namespace("app"), namespace("other")],
                10,
            )),
        ]),
    );
    let source = fake.source(options());
    let mut rx = source.subscribe();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fake.requests("pods", false).len(), 1);
    assert_eq!(fake.requests(NPS, false).len(), 1);
    {
        let s = rx.borrow_and_update();
        assert_eq!(s.revision, 0, "nothing published from a partial view");
        assert!(!s.source_ready);
        assert!(s.snapshot.policies.is_empty());
    }
    let s = wait_for(&mut rx, "ready", |s| s.source_ready).await;
    assert_eq!(s.revision, 1);
    assert!(s.snapshot.namespaces.contains_key("other"));
    assert_eq!(names(&s), ["a"]);
    assert_eq!(s.snapshot.pods.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_modifications_is_coalesced() {
    let fake = Fake::start().await;
    basic(&fake, &[np("a", 5)]);
    let mut steps = vec![Step::Sleep(Duration::from_millis(300))];
    for i in 0..1000u64 {
        let mut p = np("a", 100 + i);
        p.metadata.labels = Some([("gen".to_string(), i.to_string())].into());
        p.spec.as_mut().unwrap().pod_selector = Some(LabelSelector {
            match_labels: Some([("gen".to_string(), i.to_string())].into()),
            ..Default::default()
        });
        steps.push(Step::Line(event("MODIFIED", &p)));
    }
    steps.push(Step::Hang);
    fake.queue(NPS, true, Reply::Stream(steps));
    let source = fake.source(options());
    let mut rx = source.subscribe();
    let ready = wait_for(&mut rx, "ready", |s| s.source_ready).await;
    let s = wait_for(&mut rx, "last generation", |s| {
        format!("{:?}", s.snapshot.policies).contains("\"999\"")
    })
    .await;
    let publishes = s.revision - ready.revision;
    println!("1000 watch events -> {publishes} publishes");
    assert!(publishes < 50, "{publishes} publishes for 1000 events");
}
