//! The manifest-directory source: reloads on change, rejects a broken object and keeps the rest,
//! drops the objects of a deleted file, keeps the last good state when a file cannot be read.

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_watcher::{FileOptions, FileSource, State};
use tokio::sync::watch;

fn policy(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: app\n\
         spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: {port}\n"
    )
}

const PODS: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n  labels:\n    team: a\n---\n\
apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: app\n  labels:\n    app: web\n\
spec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: 10.0.0.5\n";

async fn wait_for(
    rx: &mut watch::Receiver<State>,
    what: &str,
    pred: impl Fn(&State) -> bool,
) -> State {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let state = rx.borrow_and_update();
            if pred(&state) {
                return state.clone();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!(
                "timed out waiting for {what}; last state: {:?}",
                rx.borrow()
            ),
        }
    }
}

fn policy_names(state: &State) -> Vec<String> {
    let mut names: Vec<String> = state
        .snapshot
        .policies
        .iter()
        .map(|p| p.name.clone())
        .collect();
    names.sort();
    names
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and ConfigMap updates do.
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_rejects_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("pods.yaml"), PODS).unwrap();
    std::fs::write(root.join("sub/a.yml"), policy("a", 80)).unwrap();
    std::fs::write(root.join("sub/b.json"), r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"b","namespace":"app"},"spec":{"podSelector":{}}}"#).unwrap();
    std::fs::write(root.join("notes.txt"), "kind: Pod\n").unwrap();

    let source = FileSource::spawn(
        vec![root.to_path_buf()],
        FileOptions {
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        },
    )
    .unwrap();
    let mut rx = source.subscribe();
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.revision, 1);
    assert!(first.source_ready && !first.stale);
    assert_eq!(policy_names(&first), ["a", "b"]);
    assert_eq!(first.snapshot.pods.len(), 1);
    assert!(first.errors.is_empty(), "{:?}", first.errors);

    // A change to one file gives a new revision with the new content.
    let t = Instant::now();
    write(&root.join("sub/a.yml"), &policy("a", 8080));
    let s = wait_for(&mut rx, "a on port 8080", |s| {
        s.snapshot
            .policies
            .iter()
            .any(|p| p.name == "a" && format!("{:?}", p).contains("8080"))
    })
    .await;
    println!("file change to publish: {:?}", t.elapsed());
    assert!(s.revision > first.revision);

    // A new file in a new subdirectory.
    std::fs::create_dir(root.join("sub/deeper")).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(root.join("sub/deeper/c.yaml"), policy("c", 53)).unwrap();
    wait_for(&mut rx, "policy c", |s| policy_names(s) == ["a", "b", "c"]).await;

    // A broken edit: only that object is rejected, named; the others stay.
    let broken = policy("c", 53).replace("port: 53", "port: 70000");
    write(&root.join("sub/deeper/c.yaml"), &broken);
    let s = wait_for(&mut rx, "c rejected", |s| !s.errors.is_empty()).await;
    assert_eq!(policy_names(&s), ["a", "b"]);
    assert_eq!(s.errors.len(), 1);
    let msg = s.errors[0].to_string();
    assert!(
        msg.contains("NetworkPolicy app/c") && msg.contains("c.yaml"),
        "{msg}"
    );
    assert_eq!(s.snapshot.pods.len(), 1);

    // Deleting a file removes its objects.
    std::fs::remove_file(root.join("sub/b.json")).unwrap();
    let s = wait_for(&mut rx, "b gone", |s| {
        !policy_names(s).contains(&"b".into())
    })
    .await;
    assert_eq!(policy_names(&s), ["a"]);

    // Fixing the broken file brings c back and clears the error.
    write(&root.join("sub/deeper/c.yaml"), &policy("c", 54));
    let s = wait_for(&mut rx, "c back", |s| policy_names(s) == ["a", "c"]).await;
    assert!(s.errors.is_empty());

    std::fs::create_dir(root.join("sub/weird.yaml")).unwrap();
    std::fs::write(root.join("sub/weird.yaml/inner.yaml"), policy("w", 1)).unwrap();
    // A directory named *.yaml is walked as a directory: inner.yaml loads.
    wait_for(&mut rx, "w loaded", |s| {
        policy_names(s).contains(&"w".into())
    })
    .await;
    std::fs::remove_dir_all(root.join("sub/weird.yaml")).unwrap();
    wait_for(&mut rx, "w gone", |s| policy_names(s) == ["a", "c"]).await;

    // Invalid UTF-8 cannot be read as text: last good state, stale, error naming the file.
    let before = rx.borrow().clone();
    std::fs::write(root.join("sub/binary.yaml"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let s = wait_for(&mut rx, "read error", |s| s.stale).await;
    assert!(std::sync::Arc::ptr_eq(&s.snapshot, &before.snapshot));
    assert!(
        s.errors
            .iter()
            .any(|e| e.origin.source.ends_with("binary.yaml")),
        "{:?}",
        s.errors
    );
    std::fs::remove_file(root.join("sub/binary.yaml")).unwrap();
    let s = wait_for(&mut rx, "recovered", |s| !s.stale).await;
    assert!(s.errors.is_empty());
    assert_eq!(policy_names(&s), ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_file_and_missing_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.yaml");
    std::fs::write(&file, policy("one", 1)).unwrap();
    assert!(FileSource::spawn(vec![dir.path().join("absent")], FileOptions::default()).is_err());
    let source = FileSource::spawn(
        vec![file.clone()],
        FileOptions {
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_millis(300),
        },
    )
    .unwrap();
    let mut rx = source.subscribe();
    assert_eq!(policy_names(&rx.borrow_and_update()), ["one"]);
    // Changes to another file in the same directory are not part of the source.
    std::fs::write(dir.path().join("other.yaml"), policy("other", 2)).unwrap();
    write(
        &file,
        &format!("{}---\n{}", policy("one", 1), policy("two", 2)),
    );
    wait_for(&mut rx, "two", |s| policy_names(s) == ["one", "two"]).await;
}

const EGRESS: &str = r#"
apiVersion: portcullis.io/v1alpha1
kind: EgressGateway
metadata: {name: prod-egress}
spec:
  selectors: [{podSelector: {}}]
  destinationCIDRs: [0.0.0.0/0]
  gateway: {nodeSelector: {}, egressIPs: [EGRESS_IPS]}
---
apiVersion: v1
kind: Node
metadata: {name: gw-1}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateways_and_nodes_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.yaml");
    std::fs::write(&path, EGRESS.replace("EGRESS_IPS", "192.0.2.100")).unwrap();
    let options = FileOptions {
        debounce: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
    };
    let source = FileSource::spawn(vec![dir.path().to_path_buf()], options).unwrap();
    let mut rx = source.subscribe();
    let first = rx.borrow_and_update().clone();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.snapshot.egress_gateways[0].name, "prod-egress");
    assert_eq!(first.snapshot.nodes[0].name, "gw-1");

    write(
        &path,
        &EGRESS.replace("EGRESS_IPS", "192.0.2.100, 192.0.2.101"),
    );
    let s = wait_for(&mut rx, "the rejection", |s| !s.errors.is_empty()).await;
    let msg = s.errors[0].to_string();
    assert!(
        msg.contains("(EgressGateway prod-egress): spec.gateway.egressIPs[1]"),
        "{msg}"
    );
    assert!(s.snapshot.egress_gateways.is_empty());
    assert_eq!(s.snapshot.nodes.len(), 1, "the node still loads");
}

/// Files that cannot be read (not UTF-8, UTF-16, a FIFO that would block the reader) are rejected
/// by name and the other files are used.
#[test]
fn unreadable_files_are_rejected_by_name_and_the_rest_used() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.yaml"), policy("a", 80)).unwrap();
    std::fs::write(root.join("binary.yaml"), [b'k', b':', 0xff, 0x80]).unwrap();
    let utf16: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(policy("u", 1).encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    std::fs::write(root.join("utf16.yaml"), utf16).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo.yaml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::fs::write(root.join("z.yaml"), policy("z", 81)).unwrap();

    let loaded = portcullis_watcher::load_files(&[root.to_path_buf()]).unwrap();
    let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
    let path = |name: &str| root.join(name).display().to_string();
    assert_eq!(
        errors,
        [
            format!(
                "{}: not UTF-8: invalid byte at offset 2 (line 1)",
                path("binary.yaml")
            ),
            format!("{}: cannot read: not a regular file", path("fifo.yaml")),
            format!(
                "{}: UTF-16 or UTF-32 (a byte-order mark); manifests must be UTF-8",
                path("utf16.yaml")
            ),
        ]
    );
    let mut names: Vec<&str> = loaded
        .snapshot
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "z"]);
}
