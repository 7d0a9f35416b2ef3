//! Daemons killed with -9 in a loop while connections stream (root, kernel): `portcullis lab
//! chaos` kills the gateway's and each node's daemon in turn, probes what the policies deny while
//! each is down and after it restarted over its pins; no connection may be lost and no denied
//! probe may get through. The long run (100 kills) is in the README; CI kills each daemon twice.
//! Every packet stays inside namespaces the command creates.

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[test]
fn killing_daemons_loses_no_connection_and_leaks_no_denied_probe() {
    portcullis_testkit::require_root();
    let out = Command::new(BIN)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["lab", "chaos", "--kills", "6", "--connections", "20"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run portcullis lab chaos");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("lab chaos: {text}");
    let result: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("one JSON object expected ({e}): {text}"));
    assert_eq!(result["kills"], 6, "{result}");
    assert_eq!(result["lost"], 0, "{result}");
    assert_eq!(result["denied_leaked"], 0, "{result}");
    assert!(result["denied_probes"].as_u64().unwrap() >= 12, "{result}");
    assert!(out.status.success(), "{result}");
}
