//! `explain --kubeconfig` against a real kube-apiserver (1.20, built by scripts/kube-test-cluster
//! from Debian's source package): the example cluster created through the API gives the same
//! verdicts as the same manifests read from disk. A machine where the server cannot be built or
//! started fails this test; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_testkit::run;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// etcd + kube-apiserver on loopback, stopped on drop (also when the test panics).
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("portcullis-kube-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Cluster { dir };
        run(Command::new(repo().join("scripts/kube-test-cluster"))
            .arg("start")
            .arg(&cluster.dir));
        cluster
    }

    fn kubectl(&self, args: &[&str]) -> String {
        run(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args))
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/kube-test-cluster"))
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn verdicts(args: &[&str]) -> Vec<(String, String, u64, String)> {
    let out = run(Command::new(BIN).args(args).current_dir(repo()));
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["from"].as_str().unwrap().to_string(),
                v["to"].as_str().unwrap().to_string(),
                v["port"].as_u64().unwrap(),
                v["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn explain_against_a_live_api_server_matches_the_manifests() {
    let cluster = Cluster::start();
    let examples = repo().join("configs/examples");
    cluster.kubectl(&[
        "apply",
        "-f",
        examples.join("cluster.yaml").to_str().unwrap(),
    ]);
    cluster.kubectl(&["apply", "-f", examples.to_str().unwrap()]);
    // Pods stay Pending without a scheduler: give them their addresses through the status
    // subresource, as a kubelet would.
    let cluster_yaml = std::fs::read_to_string(examples.join("cluster.yaml")).unwrap();
    let loaded = portcullis_policy::load::load_sources([("cluster.yaml", cluster_yaml.as_str())]);
    for pod in &loaded.snapshot.pods {
        let ip = pod.ips[0];
        let patch = format!(r#"{{"status":{{"podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#);
        cluster.kubectl(&[
            "-n",
            &pod.namespace,
            "patch",
            "pod",
            &pod.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }
    let probes = "configs/demo-probes.yaml";
    let kubeconfig = cluster.kubeconfig();
    let live = verdicts(&[
        "explain",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--probes",
        probes,
        "--output",
        "json",
    ]);
    let files = verdicts(&[
        "explain",
        "--manifests",
        "configs/examples",
        "--probes",
        probes,
        "--output",
        "json",
    ]);
    assert_eq!(live.len(), files.len());
    assert!(live.iter().any(|v| v.3 == "deny") && live.iter().any(|v| v.3 == "allow"));
    assert_eq!(live, files);
    assert!(Path::new(&kubeconfig).exists());
}
