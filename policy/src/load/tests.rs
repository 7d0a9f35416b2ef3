use super::*;
use crate::model::{Peer, Protocol};

fn load(text: &str) -> Loaded {
    load_sources([("policies.yaml", text)])
}

#[test]
fn except_outside_cidr_is_rejected_with_its_path() {
    let loaded = load(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: a}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-policy, namespace: app-stack}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.1.0/24, except: [10.0.0.0/8]}
"#,
    );
    assert_eq!(loaded.snapshot.policies.len(), 1);
    assert_eq!(
        loaded.errors[0].to_string(),
        "policies.yaml doc 2 (NetworkPolicy app-stack/db-policy): \
         spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.1.0/24"
    );
}

#[test]
fn policy_types_default_as_upstream() {
    let loaded = load(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-ingress}
spec: {podSelector: {}, egress: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both}
spec: {podSelector: {}, egress: [{}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only}
spec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}
"#,
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let by_name = |n: &str| {
        loaded
            .snapshot
            .policies
            .iter()
            .find(|p| p.name == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("only-ingress").ingress, Some(vec![]));
    assert_eq!(by_name("only-ingress").egress, None);
    assert_eq!(by_name("both").egress.map(|e| e.len()), Some(1));
    assert_eq!(by_name("egress-only").ingress, None);
    assert_eq!(by_name("egress-only").egress, Some(vec![]));
}

#[test]
fn non_canonical_cidr_means_its_network() {
    let loaded = load(
        r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 192.168.1.77/24}}]}]
"#,
    );
    let rule = &loaded.snapshot.policies[0].egress.as_ref().unwrap()[0];
    assert_eq!(
        rule.peers[0],
        Peer::IpBlock {
            cidr: "192.168.1.0/24".parse().unwrap(),
            except: vec![]
        }
    );
}

#[test]
fn invalid_fields_name_their_path() {
    let cases = [
        (
            "ports: [{port: 80, endPort: 70}]",
            "spec.ingress[0].ports[0].endPort",
        ),
        ("ports: [{endPort: 70}]", "spec.ingress[0].ports[0].endPort"),
        (
            "ports: [{port: http, endPort: 90}]",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "ports: [{port: 80, protocol: ICMP}]",
            "spec.ingress[0].ports[0].protocol",
        ),
        ("ports: [{port: 0}]", "spec.ingress[0].ports[0].port"),
        ("from: [{}]", "spec.ingress[0].from[0]"),
        (
            "from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]",
            "spec.ingress[0].from[0]",
        ),
        (
            "from: [{ipBlock: {cidr: 10.0.0.0/33}}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        ),
        (
            "from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
        ),
    ];
    for (rule, field) in cases {
        let text = format!(
                "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: p, namespace: n}}\nspec:\n  podSelector: {{}}\n  ingress: [{{{rule}}}]\n"
            );
        let loaded = load(&text);
        assert_eq!(loaded.errors.len(), 1, "{rule}: {:?}", loaded.errors);
        assert_eq!(loaded.errors[0].field, field, "{rule}");
        assert!(loaded.snapshot.policies.is_empty());
    }
}

#[test]
fn broken_yaml_and_unknown_shapes_are_errors_not_panics() {
    let loaded = load("kind: Pod\nmetadata: [1, 2\n");
    assert_eq!(loaded.errors.len(), 1);
    let loaded = load("- 1\n- 2\n");
    assert_eq!(loaded.errors.len(), 1);
    let loaded = load("# only a comment\n");
    assert!(loaded.errors.is_empty());
}

#[test]
fn a_broken_edit_keeps_the_previous_version_of_that_object() {
    let good = load(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n",
        );
    assert!(good.errors.is_empty());
    let broken = load(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: new, namespace: a}\nspec: {podSelector: {}}\n",
        );
    assert_eq!(
        broken.errors[0].identity(),
        Some(("NetworkPolicy", "a", "deny"))
    );
    let applied = broken.with_last_good(&good.snapshot).unwrap();
    let names: Vec<&str> = applied.policies.iter().map(|p| p.name.as_str()).collect();
    assert!(
        names.contains(&"deny") && names.contains(&"new"),
        "{names:?}"
    );
    assert_eq!(
        applied.policies.iter().find(|p| p.name == "deny"),
        good.snapshot.policies.first()
    );

    let unparseable = load("kind: NetworkPolicy\nmetadata: [oops\n");
    assert!(unparseable.with_last_good(&good.snapshot).is_err());
}

#[test]
fn pods_get_ips_ports_and_implicit_namespaces() {
    let loaded = load(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c
    ports: [{name: serve-80-tcp, containerPort: 80}, {containerPort: 81, protocol: UDP}]
status:
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
"#,
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let pod = &loaded.snapshot.pods[0];
    assert_eq!(pod.ips.len(), 2);
    assert_eq!(pod.named_port("serve-80-tcp", Protocol::Tcp), Some(80));
    assert_eq!(pod.named_port("serve-80-tcp", Protocol::Udp), None);
    assert_eq!(
        loaded.snapshot.namespaces["x"].labels[NAMESPACE_NAME_LABEL],
        "x"
    );
}

#[test]
fn terminated_pods_have_no_addresses() {
    let pod = |phase: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\n\
                 status: {{phase: {phase}, podIP: 10.0.0.1, podIPs: [{{ip: 10.0.0.1}}]}}\n"
        )
    };
    for (phase, ips) in [
        ("Running", 1),
        ("Pending", 1),
        ("Succeeded", 0),
        ("Failed", 0),
    ] {
        let loaded = load(&pod(phase));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.snapshot.pods[0].ips.len(), ips, "{phase}");
    }
}

#[test]
fn a_second_definition_or_a_missing_name_is_rejected_by_name() {
    let loaded = load(
        "kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n---\n\
         kind: Pod\nmetadata: {name: p, namespace: a}\n---\nkind: Pod\nmetadata: {name: p, namespace: a}\n---\n\
         kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}}\n---\n\
         kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}}\n---\n\
         kind: Pod\nmetadata: {namespace: a}\n",
    );
    let rejected: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        rejected,
        [
            "policies.yaml doc 2 (Namespace a): metadata.name: defined twice",
            "policies.yaml doc 4 (Pod a/p): metadata.name: defined twice",
            "policies.yaml doc 6 (NetworkPolicy default/n): metadata.name: defined twice",
            "policies.yaml doc 7 (Pod): metadata.name: missing",
        ]
    );
    assert_eq!(loaded.snapshot.pods.len(), 1);
    assert_eq!(loaded.snapshot.policies.len(), 1);
    assert_eq!(
        loaded.snapshot.namespaces.keys().collect::<Vec<_>>(),
        ["a", "default"]
    );
}
