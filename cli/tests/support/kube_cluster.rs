//! A real kube-apiserver and the daemons that follow it (for the test files that need them:
//! included with `#[path]`, like `applied.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-test-cluster")
}

fn run_script(verb: &str, dir: &Path) {
    let status = Command::new(script())
        .arg(verb)
        .arg(dir)
        .status()
        .expect("scripts/kube-test-cluster runs");
    assert!(status.success(), "kube-test-cluster {verb} failed");
}

/// etcd + kube-apiserver on loopback (of the namespace the test runs in), stopped on drop (also
/// when the test panics).
pub struct Cluster(tempfile::TempDir);

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-kube-")
            .tempdir()
            .unwrap();
        run_script("start", dir.path());
        Cluster(dir)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.0.path().join("kubeconfig")
    }

    /// Stops the API server only; etcd keeps the data.
    pub fn stop_apiserver(&self) {
        run_script("stop-apiserver", self.0.path());
    }

    /// Starts it again on the same port over the same etcd; returns once it serves.
    pub fn start_apiserver(&self) {
        run_script("start-apiserver", self.0.path());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.0.path())
            .status();
    }
}

/// A daemon (`gateway ...`, `node ...`) following the cluster, run with `--unpin-on-exit`,
/// stopped (SIGTERM) on drop; its log is collected.
pub struct KubeDaemon {
    child: Child,
    state_dir: PathBuf,
    log: std::sync::mpsc::Receiver<String>,
}

impl KubeDaemon {
    pub fn start(args: &[&str], kubeconfig: &Path, state_dir: &Path, pin_name: &str) -> KubeDaemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .arg("--unpin-on-exit")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--pin-dir")
            .arg(format!("/sys/fs/bpf/{pin_name}"))
            .arg("--state-dir")
            .arg(state_dir)
            .env("PORTCULLIS_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a daemon");
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        KubeDaemon {
            child,
            state_dir: state_dir.to_path_buf(),
            log,
        }
    }

    /// Its published state (`state.json`), `null` before the first.
    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_dir.join("state.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// `(applied_unix_ms, generation)` of its published state.
    pub fn published(&self) -> (u64, u64) {
        let v = self.state();
        (
            v["applied_unix_ms"].as_u64().unwrap_or(0),
            v["generation"].as_u64().unwrap_or(0),
        )
    }

    pub fn wait_applied(&self, limit: Duration) {
        let t = Instant::now();
        while self.published().0 == 0 {
            assert!(
                t.elapsed() < limit,
                "the daemon never applied the initial state"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        (status.lines())
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    }

    /// Stops it and returns its log.
    pub fn stop(mut self) -> Vec<String> {
        self.terminate();
        std::thread::sleep(Duration::from_millis(100));
        self.log.try_iter().collect()
    }

    fn terminate(&mut self) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KubeDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}
