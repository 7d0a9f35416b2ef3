//! Waiting for a daemon a test started to put its first generation in force (for the test files
//! that start daemons: included with `#[path]`, so the others do not carry it unused).

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_lab::LabChild;

/// When the daemon publishing into `state_dir` last applied a generation (0: never).
pub fn applied_unix_ms(state_dir: &Path) -> u64 {
    std::fs::read_to_string(state_dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["applied_unix_ms"].as_u64())
        .unwrap_or(0)
}

/// Waits until the daemon publishing into `state_dir` has applied a generation; fails when
/// `daemon` (named `what`) exits first or 30 s pass.
pub fn wait_until_applied(daemon: &LabChild, what: &str, state_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied_unix_ms(state_dir) == 0 {
        assert!(daemon.try_wait().unwrap().is_none(), "{what} exited early");
        assert!(
            Instant::now() < deadline,
            "{what} did not apply within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
