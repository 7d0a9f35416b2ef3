//! explain and audit with an EgressGateway in the manifests: the egress IP a probe leaves with,
//! and the EgressGateway findings.

mod common;
use common::portcullis;

const MANIFESTS: &str = r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: prod, labels: {app: a}}
status: {podIP: 10.0.0.5}
---
kind: Node
apiVersion: v1
metadata: {name: gw-1, labels: {portcullis.io/egress-gateway: "true"}}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: portcullis.io/v1alpha1
kind: EgressGateway
metadata: {name: prod-egress}
spec:
  selectors: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}}]
  destinationCIDRs: ["0.0.0.0/0"]
  gateway:
    nodeSelector: {matchLabels: {portcullis.io/egress-gateway: "true"}}
    egressIPs: ["192.0.2.100"]
---
apiVersion: portcullis.io/v1alpha1
kind: EgressGateway
metadata: {name: idle}
spec:
  selectors: [{podSelector: {matchLabels: {app: gone}}}]
  destinationCIDRs: ["0.0.0.0/0"]
  gateway: {nodeSelector: {matchLabels: {role: none}}, egressIPs: ["192.0.2.100"]}
"#;

/// Runs `test` with the manifests in a directory of its own (tests run in parallel).
fn with_manifests(name: &str, test: impl FnOnce(&str)) {
    let dir = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("egress.yaml");
    std::fs::write(&path, MANIFESTS).unwrap();
    test(path.to_str().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_says_which_egress_ip_a_probe_leaves_with() {
    with_manifests("egress-explain", |path| {
        let probe = ["--from", "prod/a", "--to", "203.0.113.9", "--port", "443"];
        let out = portcullis(
            &[
                &["explain", "--manifests", path, "--output", "json"],
                &probe[..],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["verdict"], "allow");
        assert_eq!(line["egress_ip"], "192.0.2.100");
        assert_eq!(line["egress_gateway"], "prod-egress");
        let out = portcullis(&[&["explain", "--manifests", path], &probe[..]].concat());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("; leaves as 192.0.2.100 (EgressGateway prod-egress)"),
            "{text}"
        );
    });
}

#[test]
fn audit_reports_egress_gateway_mistakes() {
    with_manifests("egress-audit", |path| {
        let out = portcullis(&[
            "audit",
            "--manifests",
            path,
            "--output",
            "json",
            "--node-state",
            "/nonexistent",
        ]);
        let findings: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let checks: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| (f["check"].as_str().unwrap(), f["object"].as_str().unwrap()))
            .collect();
        for expected in [
            ("egress-selects-no-pod", "EgressGateway idle"),
            ("egress-no-gateway-node", "EgressGateway idle"),
            ("egress-ip-shared", "EgressGateway prod-egress"),
            ("egress-no-standby", "EgressGateway prod-egress"),
        ] {
            assert!(checks.contains(&expected), "{expected:?} in {checks:?}");
        }
    });
}
