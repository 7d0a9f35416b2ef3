use super::*;
use crate::model::Selector;

const GOOD: &str = r#"
apiVersion: portcullis.io/v1alpha1
kind: EgressGateway
metadata: {name: prod-egress}
spec:
  selectors:
  - namespaceSelector: {matchLabels: {env: prod}}
    podSelector: {}
  - podSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}
  destinationCIDRs: ["0.0.0.0/0", "::/0", "203.0.113.77/24"]
  excludedCIDRs: ["10.0.0.0/8"]
  gateway:
    nodeSelector: {matchLabels: {portcullis.io/egress-gateway: "true"}}
    egressIPs: ["192.0.2.100", "2001:db8::100"]
---
apiVersion: v1
kind: Node
metadata: {name: gw-1, labels: {portcullis.io/egress-gateway: "true"}}
status:
  addresses:
  - {type: Hostname, address: gw-1}
  - {type: ExternalIP, address: 198.51.100.1}
  - {type: InternalIP, address: 172.18.0.2}
  - {type: InternalIP, address: "fe80::1"}
  - {type: ExternalIP, address: 172.18.0.2}
"#;

fn load(text: &str) -> Loaded {
    load_sources([("egress.yaml", text)])
}

#[test]
fn egress_gateways_and_nodes_load() {
    let loaded = load(GOOD);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let gateway = &loaded.snapshot.egress_gateways[0];
    assert_eq!(gateway.name, "prod-egress");
    assert_eq!(gateway.selectors.len(), 2);
    assert_eq!(gateway.selectors[0].pod_selector, Some(Selector::default()));
    assert_eq!(gateway.selectors[1].namespace_selector, None);
    let cidrs: Vec<String> = gateway
        .destination_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    // Host bits are cleared as for ipBlock.cidr.
    assert_eq!(cidrs, ["0.0.0.0/0", "::/0", "203.0.113.0/24"]);
    assert_eq!(gateway.egress_ips.len(), 2);
    let node = &loaded.snapshot.nodes[0];
    let addresses: Vec<String> = node.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addresses, ["172.18.0.2", "fe80::1", "198.51.100.1"]);
}

/// Each case replaces one line of [`GOOD`]'s EgressGateway and expects this error.
#[test]
fn bad_egress_gateways_are_rejected_by_name_and_field() {
    let cases = [
        (
            r#"    egressIPs: ["192.0.2.100", "2001:db8::100"]"#,
            r#"    egressIPs: ["192.0.2.100", "192.0.2.101"]"#,
            "spec.gateway.egressIPs[1]: 192.0.2.101: at most one egress IP per address family",
        ),
        (
            r#"  destinationCIDRs: ["0.0.0.0/0", "::/0", "203.0.113.77/24"]"#,
            r#"  destinationCIDRs: ["0.0.0.0/0"]"#,
            "spec.gateway.egressIPs[1]: 2001:db8::100: no destinationCIDR is IPv6, so it would never be used",
        ),
        (
            r#"    egressIPs: ["192.0.2.100", "2001:db8::100"]"#,
            r#"    egressIPs: ["192.0.2.300"]"#,
            r#"spec.gateway.egressIPs[0]: "192.0.2.300" is not an IP address"#,
        ),
        (
            r#"    egressIPs: ["192.0.2.100", "2001:db8::100"]"#,
            r#"    egressIPs: ["224.0.0.1"]"#,
            "spec.gateway.egressIPs[0]: 224.0.0.1 is unspecified, loopback or multicast",
        ),
        (
            r#"    egressIPs: ["192.0.2.100", "2001:db8::100"]"#,
            r#"    egressIPs: []"#,
            "spec.gateway.egressIPs: must list 1 or 2 addresses, not 0",
        ),
        (
            r#"  destinationCIDRs: ["0.0.0.0/0", "::/0", "203.0.113.77/24"]"#,
            r#"  destinationCIDRs: ["0.0.0.0/0", "10.0.0.0/33"]"#,
            r#"spec.destinationCIDRs[1]: "10.0.0.0/33" is not a CIDR"#,
        ),
        (
            r#"  destinationCIDRs: ["0.0.0.0/0", "::/0", "203.0.113.77/24"]"#,
            r#"  destinationCIDRs: []"#,
            "spec.destinationCIDRs: must list at least one CIDR",
        ),
        (
            r#"  excludedCIDRs: ["10.0.0.0/8"]"#,
            r#"  excludedCIDRs: ["ten"]"#,
            r#"spec.excludedCIDRs[0]: "ten" is not a CIDR"#,
        ),
        (
            r#"  - podSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}"#,
            r#"  - podSelector: {matchExpressions: [{key: app, operator: Has}]}"#,
            r#"spec.selectors[1].podSelector.matchExpressions[0].operator: "Has" is not In, NotIn, Exists or DoesNotExist"#,
        ),
        (
            r#"  - podSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}"#,
            r#"  - {}"#,
            "spec.selectors[1]: must specify namespaceSelector or podSelector",
        ),
        (
            r#"    nodeSelector: {matchLabels: {portcullis.io/egress-gateway: "true"}}"#,
            r#"    nodeSelector: {matchLabels: {"bad key!": x}}"#,
            r#"spec.gateway.nodeSelector.matchLabels[bad key!]: "bad key!" is not a valid label key"#,
        ),
        (
            r#"    nodeSelector: {matchLabels: {portcullis.io/egress-gateway: "true"}}"#,
            "",
            "spec.gateway.nodeSelector: missing",
        ),
        (
            "metadata: {name: prod-egress}",
            "metadata: {name: Prod_Egress}",
            r#"metadata.name: "Prod_Egress" is not a valid DNS subdomain"#,
        ),
    ];
    for (line, replacement, expected) in cases {
        assert!(GOOD.contains(line), "{line}");
        let loaded = load(&GOOD.replacen(line, replacement, 1));
        let name = if replacement.starts_with("metadata") {
            "Prod_Egress"
        } else {
            "prod-egress"
        };
        assert_eq!(
            loaded
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
            [format!(
                "egress.yaml doc 1 (EgressGateway {name}): {expected}"
            )],
        );
        assert!(loaded.snapshot.egress_gateways.is_empty());
        assert_eq!(loaded.snapshot.nodes.len(), 1, "the rest still loads");
    }
}

#[test]
fn a_gateway_of_the_wrong_shape_is_still_rejected_by_name() {
    let loaded = load(&GOOD.replace(
        r#"egressIPs: ["192.0.2.100", "2001:db8::100"]"#,
        "egressIPs: 192.0.2.100",
    ));
    assert_eq!(
        loaded.errors[0].identity(),
        Some(("EgressGateway", "", "prod-egress"))
    );
    assert!(
        loaded.errors[0].message.contains("expected a sequence"),
        "{}",
        loaded.errors[0]
    );
}

#[test]
fn a_bad_node_address_is_rejected_by_name() {
    let loaded = load("kind: Node\napiVersion: v1\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: nope}]}\n");
    assert_eq!(
        loaded.errors[0].to_string(),
        r#"egress.yaml doc 1 (Node n): status.addresses[0].address: "nope" is not an IP address"#
    );
}

#[test]
fn a_broken_egress_gateway_keeps_its_last_good_version() {
    let good = load(GOOD);
    let broken = load(
        &GOOD
            .replace(
                "egressIPs: [\"192.0.2.100\", \"2001:db8::100\"]",
                "egressIPs: [\"192.0.2.1\", \"192.0.2.2\"]",
            )
            .replace("name: gw-1", "name: gw-2"),
    );
    assert_eq!(
        broken.errors[0].identity(),
        Some(("EgressGateway", "", "prod-egress"))
    );
    let applied = broken.with_last_good(&good.snapshot).unwrap();
    assert_eq!(applied.egress_gateways, good.snapshot.egress_gateways);
    let nodes: Vec<&str> = applied.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["gw-2"], "a node that is gone stays gone");
}
