//! `explain` answers every probe: one it cannot answer gets a line of its own with an `error` in
//! place of the verdict, the others are still answered in order, and the exit status is 2 (a file
//! answered in full exits 0: explain_audit.rs).

use std::path::PathBuf;
use std::process::{Command, Output};

/// A probe file with an unanswerable probe (an IPv6 host to an IPv4-only pod) between two good
/// ones, then a pod that does not exist and an endpoint that is not one; `--output output`.
fn explain(output: &str) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-explain-errors-{output}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let probes = dir.join("probes.yaml");
    std::fs::write(
        &probes,
        r#"- {"from": "x/a", "to": "192.168.1.20", "port": 443, "protocol": "TCP"}
- {"from": "2001:db8::1", "to": "x/a", "port": 443, "protocol": "TCP"}
- {"from": "app-stack/api", "to": "app-stack/database", "port": 5432, "protocol": "TCP"}
- {"from": "x/nope", "to": "x/a", "port": 80, "protocol": "TCP"}
- {"from": "x/a", "to": "not-an-endpoint", "port": 80, "protocol": "TCP"}
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "--manifests", "configs/examples", "--probes"])
        .arg(&probes)
        .args(["--output", output])
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("portcullis runs");
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

#[test]
fn an_unanswerable_probe_gets_an_error_line_and_the_rest_are_answered() {
    let out = explain("json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[2]["verdict"], "allow");
    assert_eq!(lines[2]["from"], "app-stack/api");

    let ipv6 = &lines[1];
    assert!(ipv6.get("verdict").is_none(), "{ipv6}");
    assert_eq!(ipv6["from"], "2001:db8::1");
    assert_eq!(ipv6["to"], "x/a");
    assert_eq!(ipv6["port"], 443);
    assert_eq!(ipv6["protocol"], "TCP");
    let error = ipv6["error"].as_str().unwrap();
    assert!(
        error.contains("2001:db8::1 -> x/a TCP/443") && error.contains("no address family"),
        "{error}"
    );

    let unknown = lines[3]["error"].as_str().unwrap();
    assert!(
        unknown.contains("pod x/nope is not in the manifests"),
        "{unknown}"
    );
    let malformed = lines[4]["error"].as_str().unwrap();
    assert!(
        malformed.contains("\"not-an-endpoint\" is neither an IP address nor namespace/pod"),
        "{malformed}"
    );
    // Every error is on stderr too, for a reader of the exit status who kept only that.
    assert_eq!(stderr.matches("error: probe ").count(), 3, "{stderr}");
}

#[test]
fn the_table_has_an_error_row_in_place() {
    let out = explain("table");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{text}");
    assert!(rows[0].contains("allow"), "{text}");
    assert!(
        rows[1].contains("ERROR") && rows[1].contains("no address family"),
        "{text}"
    );
    assert!(rows[2].contains("allow"), "{text}");
}
