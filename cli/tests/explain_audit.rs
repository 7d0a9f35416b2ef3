//! The CLI as a user runs it: explain and audit on the shipped examples, and bad input.

mod common;
use common::portcullis;

#[test]
fn explain_the_seed_ipblock_example() {
    let out = portcullis(&[
        "explain",
        "--manifests",
        "configs/examples",
        "--probes",
        "configs/demo-probes.yaml",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdict = |from: &str, to: &str, port: u64| {
        lines
            .iter()
            .find(|l| l["from"] == from && l["to"] == to && l["port"] == port)
            .map(|l| l["verdict"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(verdict("x/a", "192.168.1.20", 443), "allow");
    assert_eq!(verdict("x/a", "192.168.1.10", 443), "deny");
    assert_eq!(
        verdict("app-stack/frontend", "app-stack/database", 5432),
        "deny"
    );
    assert_eq!(
        verdict("app-stack/api", "app-stack/database", 5432),
        "allow"
    );
    assert_eq!(
        verdict("prod-apps/billing", "prod-apps/ledger", 8080),
        "deny"
    );
}

#[test]
fn explain_table_names_the_deciding_policy() {
    let out = portcullis(&[
        "explain",
        "--manifests",
        "configs/examples",
        "--from",
        "x/a",
        "--to",
        "192.168.1.10",
        "--port",
        "443",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("DENY"), "{text}");
    assert!(text.contains("x/egress-lan-except-host"), "{text}");
}

#[test]
fn invalid_policy_is_rejected_by_name_and_the_rest_still_answers() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-policy, namespace: app-stack}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 192.168.1.0/24, except: [10.0.0.0/8]}}]\n",
    )
    .unwrap();
    let out = portcullis(&[
        "explain",
        "--manifests",
        "configs/examples/cluster.yaml",
        bad.to_str().unwrap(),
        "--from",
        "x/a",
        "--to",
        "x/b",
        "--port",
        "443",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("doc 1 (NetworkPolicy app-stack/db-policy): spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.1.0/24"),
        "{stderr}"
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains("allow"));
}

#[test]
fn unknown_pod_is_a_clear_error() {
    let out = portcullis(&[
        "explain",
        "--manifests",
        "configs/examples",
        "--from",
        "x/nope",
        "--to",
        "x/b",
        "--port",
        "443",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("pod x/nope is not in the manifests"));
}

#[test]
fn audit_fails_on_the_requested_severity() {
    let out = portcullis(&[
        "audit",
        "--manifests",
        "configs/examples",
        "--output",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = portcullis(&[
        "audit",
        "--manifests",
        "configs/examples",
        "--fail-on",
        "medium",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("no-default-deny-egress"));
}
