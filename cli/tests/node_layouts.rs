//! The node daemon on a bridged pod layout (the CNI bridge plugin's: pod veths enslaved to a
//! bridge, the route to every pod naming the bridge) with real traffic: each pod's own veth is
//! found through its network namespace and enforced, including between two pods of the same
//! bridge; a pod selected by policy that cannot be enforced makes `status --node` fail; and a pod
//! set up through the chained CNI plugin is under policy from its first packet, before the daemon
//! has seen it in the cluster state. The node itself reaches its pods whatever their policies
//! (Kubernetes: a pod cannot block its node).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::{sh, NetNs};

#[path = "support/dirs.rs"]
mod dirs;
use dirs::DaemonDirs;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const BRIDGE: &str = "pclbr0";

/// Pins, state and manifests of one daemon run, and its CNI plugin directory, removed even on
/// failure.
struct Dirs {
    run: DaemonDirs,
    plugin_dir: PathBuf,
}

impl Dirs {
    fn new(tag: &str) -> Dirs {
        let run = DaemonDirs::new(tag);
        let plugin_dir = run.state_dir.with_extension("cni");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        Dirs { run, plugin_dir }
    }
}

impl std::ops::Deref for Dirs {
    type Target = DaemonDirs;
    fn deref(&self) -> &DaemonDirs {
        &self.run
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.plugin_dir);
    }
}

/// The daemon, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: n1, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

const NAMESPACE: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {kubernetes.io/metadata.name: demo}}\n";

fn deny_all(name: &str, app: &str, direction: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: demo}}\n\
         spec: {{podSelector: {{matchLabels: {{app: {app}}}}}, policyTypes: [{direction}]}}\n"
    )
}

/// Writes the manifests as one file (replaced atomically: the daemon reloads on change).
fn write_manifests(dir: &Path, docs: &[String]) {
    let tmp = dir.join(".cluster.yaml.tmp");
    std::fs::write(&tmp, docs.join("---\n")).unwrap();
    std::fs::rename(&tmp, dir.join("cluster.yaml")).unwrap();
}

/// A pod: its own namespace, a veth whose host side (`host_if`) is a port of the node's bridge.
fn bridged_pod(node: &NetNs, tag: &str, host_if: &str, ip: &str) -> NetNs {
    let pod = NetNs::new(tag);
    sh(&format!(
        "ip -n {n} link add {host_if} type veth peer name eth0 netns {p} && \
         ip -n {n} link set {host_if} master {BRIDGE} up && \
         ip -n {p} addr add {ip}/24 dev eth0 && ip -n {p} link set eth0 up && \
         ip -n {p} route add default via 10.77.0.1",
        n = node.name,
        p = pod.name
    ));
    pod
}

/// Listens on `addr` inside `pod` and answers every connection with "ok".
fn serve(pod: &NetNs, addr: SocketAddr) {
    let listener = pod.run(|| TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"ok");
        }
    });
}

/// Whether a TCP connection from `pod` to `addr` completes and gets the server's reply.
fn connects(pod: &NetNs, addr: SocketAddr, timeout: Duration) -> bool {
    pod.run(|| {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
            return false;
        };
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).is_ok() && &buf == b"ok"
    })
}

fn status(dirs: &Dirs) -> (serde_json::Value, bool) {
    let out = (dirs.tool(&["status", "--node", "--output", "json"]))
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (v, out.status.success())
}

/// Waits until `status --node` satisfies `ok` (10 s at most).
fn wait_status(
    dirs: &Dirs,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (v, _) = status(dirs);
        if ok(&v) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod_state<'a>(v: &'a serde_json::Value, pod: &str) -> Option<&'a serde_json::Value> {
    v["pods"].as_array()?.iter().find(|p| p["pod"] == pod)
}

fn attached(v: &serde_json::Value, pod: &str) -> bool {
    pod_state(v, pod).is_some_and(|p| p["attached"] == true)
}

/// Runs the chained plugin as a container runtime would, after the bridge plugin created the
/// pod's veth (`host_if`) and gave it `ip`.
fn cni(
    dirs: &Dirs,
    command: &str,
    container: &str,
    pod: &NetNs,
    host_if: &str,
    ip: &str,
) -> Output {
    let plugin = dirs.plugin_dir.join("portcullis-cni");
    if !plugin.exists() {
        std::os::unix::fs::symlink(BIN, &plugin).unwrap();
    }
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "test",
        "type": "portcullis-cni",
        "socket": dirs.state_dir.join("cni.sock"),
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": BRIDGE},
                {"name": host_if},
                {"name": "eth0", "sandbox": format!("/var/run/netns/{}", pod.name)}
            ],
            "ips": [{"address": format!("{ip}/24"), "interface": 2}]
        }
    });
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{}", pod.name))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=demo;K8S_POD_NAME={container}"),
        )
        .env("CNI_PATH", &dirs.plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn bridged_pods_are_enforced_and_new_pods_from_their_first_packet() {
    portcullis_testkit::require_root();
    let node = NetNs::new("brnode");
    sh(&format!(
        "ip -n {n} link add {BRIDGE} type bridge && ip -n {n} addr add 10.77.0.1/24 dev {BRIDGE} && \
         ip -n {n} link set {BRIDGE} up",
        n = node.name
    ));
    let a = bridged_pod(&node, "bra", "pcla", "10.77.0.10");
    let b = bridged_pod(&node, "brb", "pclb", "10.77.0.11");
    let c = bridged_pod(&node, "brc", "pclc", "10.77.0.12");
    let port = 8080;
    let addr = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    serve(&b, addr("10.77.0.11"));
    serve(&c, addr("10.77.0.12"));
    let short = Duration::from_millis(700);
    // Without the daemon everything connects (the bridge forwards between its ports).
    assert!(connects(&a, addr("10.77.0.11"), short));

    let dirs = Dirs::new("bridge");
    let mut docs = vec![
        NAMESPACE.to_owned(),
        pod_yaml("a", "10.77.0.10"),
        pod_yaml("b", "10.77.0.11"),
        pod_yaml("c", "10.77.0.12"),
        // Selected by a policy, but no interface of this node has it: must be reported.
        pod_yaml("ghost", "10.77.0.99"),
        deny_all("b-deny-ingress", "b", "Ingress"),
        deny_all("ghost-deny", "ghost", "Ingress"),
    ];
    write_manifests(&dirs.manifests, &docs);
    let node_fd = std::fs::File::open(format!("/var/run/netns/{}", node.name)).unwrap();
    let mut cmd = dirs.daemon(&["node", "--node", "n1", "--unpin-on-exit"]);
    cmd.arg("--cni-socket").arg(dirs.state_dir.join("cni.sock"));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&node_fd);
    // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _daemon = Daemon(cmd.spawn().unwrap());

    let v = wait_status(&dirs, "a, b and c attached", |v| {
        ["demo/a", "demo/b", "demo/c"]
            .iter()
            .all(|p| attached(v, p))
    });
    for (pod, iface) in [("demo/a", "pcla"), ("demo/b", "pclb"), ("demo/c", "pclc")] {
        let p = pod_state(&v, pod).unwrap();
        assert_eq!(p["interface"], iface, "{v:#}");
        assert_eq!(p["found_by"], "netns", "{v:#}");
    }
    let ghost = pod_state(&v, "demo/ghost").expect("ghost listed");
    assert!(
        ghost["attached"] == false && ghost["selected"] == true,
        "{v:#}"
    );
    assert!(
        !status(&dirs).1,
        "status must fail while a selected pod is not enforced"
    );
    let audit = Command::new(BIN)
        .args(["audit", "--output", "json", "--manifests"])
        .arg(&dirs.manifests)
        .arg("--node-state")
        .arg(&dirs.state_dir)
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.lines().any(|l| l.contains("pod-not-enforced")
            && l.contains("demo/ghost")
            && l.contains("high")),
        "{audit}"
    );

    // Same bridge: b's deny-all ingress holds, c stays reachable.
    assert!(
        !connects(&a, addr("10.77.0.11"), short),
        "a -> b must be denied"
    );
    assert!(
        connects(&a, addr("10.77.0.12"), short),
        "a -> c must connect"
    );
    // The node itself always reaches its pods (kubelet probes), whatever their policies.
    assert!(
        connects(&node, addr("10.77.0.11"), short),
        "node -> b must connect despite b's deny-all ingress"
    );

    // A new pod d: the bridge plugin wired it, the chained plugin returns only once d's veth
    // fails closed. The daemon has not seen d in the cluster state yet.
    let d = bridged_pod(&node, "brd", "pcld", "10.77.0.13");
    let out = cni(&dirs, "ADD", "d", &d, "pcld", "10.77.0.13");
    assert!(
        out.status.success(),
        "CNI ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["ips"][0]["address"], "10.77.0.13/24",
        "prevResult passed on"
    );
    // Its first packet: not through, although nothing denies d yet.
    assert!(
        !connects(&d, addr("10.77.0.12"), short),
        "an unknown pod's first connection must not get through"
    );
    let v = wait_status(&dirs, "the drop counted", |v| {
        v["counters"]["drop_unknown_pod"].as_u64() > Some(0)
    });
    assert!(v["counters"]["drop_unknown_pod"].as_u64() > Some(0));

    // d appears with a policy denying its egress: still no connection.
    docs.push(pod_yaml("d", "10.77.0.13"));
    docs.push(deny_all("d-deny-egress", "d", "Egress"));
    write_manifests(&dirs.manifests, &docs);
    wait_status(&dirs, "d attached", |v| attached(v, "demo/d"));
    assert!(
        !connects(&d, addr("10.77.0.12"), short),
        "d's egress is denied"
    );

    // The policy goes: d connects; how long after the change is the cost a new pod pays.
    docs.pop();
    let changed = Instant::now();
    write_manifests(&dirs.manifests, &docs);
    let mut first = None;
    while changed.elapsed() < Duration::from_secs(10) {
        if connects(&d, addr("10.77.0.12"), Duration::from_millis(300)) {
            first = Some(changed.elapsed());
            break;
        }
    }
    let first = first.expect("d must connect once nothing denies it");
    eprintln!("allowed pod: first connection {first:?} after the change was written");

    // CHECK and DEL as the runtime sends them; DEL forgets the registration.
    assert!(cni(&dirs, "CHECK", "d", &d, "pcld", "10.77.0.13")
        .status
        .success());
    assert!(cni(&dirs, "DEL", "d", &d, "pcld", "10.77.0.13")
        .status
        .success());
    let registered = std::fs::read_to_string(dirs.state_dir.join("cni-interfaces.json")).unwrap();
    assert!(!registered.contains("pcld"), "{registered}");

    // A pod the API shows without an address yet (kubelet reports it only after the containers
    // started): the address the CNI plugin reports puts it in force at once.
    docs.push(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: f, namespace: demo, labels: {app: f}}\n\
         spec: {nodeName: n1, containers: [{name: c, image: x}]}\nstatus: {phase: Pending}\n"
            .to_owned(),
    );
    let before = status(&dirs).0["generation"].clone();
    write_manifests(&dirs.manifests, &docs);
    wait_status(&dirs, "the pending pod's generation", |v| {
        v["generation"] != before
    });
    let f = bridged_pod(&node, "brf", "pclf", "10.77.0.15");
    let added = Instant::now();
    assert!(cni(&dirs, "ADD", "f", &f, "pclf", "10.77.0.15")
        .status
        .success());
    let mut in_force = None;
    while added.elapsed() < Duration::from_secs(5) {
        if connects(&f, addr("10.77.0.12"), Duration::from_millis(200)) {
            in_force = Some(added.elapsed());
            break;
        }
    }
    let in_force = in_force.expect("a pending pod set up through the plugin must connect");
    eprintln!("pending pod: first connection {in_force:?} after CNI ADD");
    assert!(in_force < Duration::from_secs(2), "{in_force:?}");

    // A plugin whose daemon is gone fails the ADD (the runtime retries; no pod starts
    // unenforced).
    drop(_daemon);
    let e = bridged_pod(&node, "bre", "pcle", "10.77.0.14");
    let out = cni(&dirs, "ADD", "e", &e, "pcle", "10.77.0.14");
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        err["msg"].as_str().unwrap().contains("node daemon"),
        "{err}"
    );
}
