//! The loader's verdicts against the Kubernetes v1.33 API server's: objects from upstream's
//! `pkg/apis/networking/validation/validation_test.go` (success and error cases), and the
//! ObjectMeta, Namespace and Pod rules the loader applies, each accepted or rejected at the
//! field upstream names first.

use super::*;

/// What the API server does with the object: accept it, or reject it at this field.
#[derive(Debug, PartialEq)]
enum Want {
    Accept,
    Reject(&'static str),
}
use Want::{Accept, Reject};

const SELECTOR_KEY: &str = "NoUppercaseOrSpecialCharsLike=Equals";

/// A NetworkPolicy `foo` in `bar` selecting `a: b`, with these spec lines after podSelector.
fn policy(spec: &str) -> String {
    policy_with_meta("{name: foo, namespace: bar}", spec)
}

fn policy_with_meta(metadata: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {metadata}\n\
         spec:\n  podSelector: {{matchLabels: {{a: b}}}}\n  {spec}\n"
    )
}

fn verdict(text: &str) -> Want {
    let loaded = load_sources([("t.yaml", text)]);
    match loaded.errors.as_slice() {
        [] => Accept,
        [e] => Reject(e.field.clone().leak()),
        more => panic!("one object, {} errors: {more:?}", more.len()),
    }
}

fn check(cases: Vec<(&str, String, Want)>) {
    let mismatches: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, text, want)| {
            let got = verdict(&text);
            (got != want).then(|| format!("{name}: want {want:?}, got {got:?}\n{text}"))
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

const V4_BLOCK: &str =
    "{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.3.0/24, 192.168.4.0/24]}}";
const V6_BLOCK: &str =
    "{ipBlock: {cidr: 'fd00:192:168::/48', except: ['fd00:192:168:3::/64', 'fd00:192:168:4::/64']}}";
const PORTS: &str = "[{port: 80}, {protocol: TCP}, {protocol: TCP, port: 443}, \
                     {protocol: UDP, port: dns}, {protocol: SCTP, port: 7777}]";

#[test]
fn upstream_success_cases_are_accepted() {
    let p = |spec: String| ("success", policy(&spec), Accept);
    check(vec![
        p("ingress: [{}]".into()),
        p("ingress: [{ports: [{}]}]".into()),
        p(format!("ingress: [{{ports: {PORTS}}}]")),
        p("ingress: [{from: [{podSelector: {matchLabels: {c: d}}}]}]".into()),
        p("ingress: [{from: [{namespaceSelector: {matchLabels: {c: d}}}]}]".into()),
        p("ingress: [{from: [{podSelector: {matchLabels: {e: f}}, namespaceSelector: {matchLabels: {c: d}}}]}]".into()),
        p(format!("ingress: [{{from: [{V4_BLOCK}]}}]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{c: d}}}}}}]}}]")),
        p(format!("ingress: [{{from: [{V4_BLOCK}]}}]")),
        p(format!("egress: [{{to: [{V4_BLOCK}]}}]\n  policyTypes: [Egress]")),
        p(format!("egress: [{{to: [{V4_BLOCK}]}}]\n  policyTypes: [Ingress, Egress]")),
        p(format!("egress: [{{ports: {PORTS}}}]")),
        p(format!("ingress: [{{from: [{V6_BLOCK}]}}]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{c: d}}}}}}]}}]")),
        p(format!("ingress: [{{from: [{V6_BLOCK}]}}]")),
        p(format!("egress: [{{to: [{V6_BLOCK}]}}]\n  policyTypes: [Egress]")),
        p(format!("egress: [{{to: [{V6_BLOCK}]}}]\n  policyTypes: [Ingress, Egress]")),
        p("egress: [{ports: [{port: 32000, endPort: 32768}, {protocol: UDP, port: dns}]}]".into()),
        p("egress: [{to: [{namespaceSelector: {matchLabels: {c: d}}}], ports: [{port: 30000, endPort: 32768}, {port: 32000, endPort: 32768}]}]\n  \
           ingress: [{from: [{podSelector: {matchLabels: {e: f}}}], ports: [{protocol: TCP, port: 32768, endPort: 32768}]}]".into()),
    ]);
}

#[test]
fn upstream_error_cases_are_rejected_at_their_field() {
    let ns = "{namespaceSelector: {matchLabels: {c: d}}}";
    let block = |cidr: &str, except: &str| {
        policy(&format!(
            "ingress: [{{from: [{{ipBlock: {{cidr: '{cidr}', except: [{except}]}}}}]}}]"
        ))
    };
    let egress_ports = |ports: &str| policy(&format!("egress: [{{to: [{ns}], ports: [{ports}]}}]"));
    let bad_labels = format!("{{matchLabels: {{'{SELECTOR_KEY}': b}}}}");
    let bad_label_field =
        |path: &str| -> &'static str { format!("{path}.matchLabels[{SELECTOR_KEY}]").leak() };
    check(vec![
        ("namespaceSelector and ipBlock",
         policy("ingress: [{from: [{namespaceSelector: {matchLabels: {c: d}}, ipBlock: {cidr: 192.168.0.0/16}}]}]"),
         Reject("spec.ingress[0].from[0]")),
        ("podSelector and ipBlock",
         policy("egress: [{to: [{podSelector: {matchLabels: {c: d}}, ipBlock: {cidr: 192.168.0.0/16}}]}]"),
         Reject("spec.egress[0].to[0]")),
        ("missing from and to type",
         policy("ingress: [{from: [{}]}]\n  egress: [{to: [{}]}]"),
         Reject("spec.ingress[0].from[0]")),
        ("invalid spec.podSelector",
         format!("kind: NetworkPolicy\nmetadata: {{name: foo, namespace: bar}}\nspec: {{podSelector: {bad_labels}}}\n"),
         Reject(bad_label_field("spec.podSelector"))),
        ("invalid ingress.ports.protocol", policy("ingress: [{ports: [{protocol: ICMP, port: 80}]}]"),
         Reject("spec.ingress[0].ports[0].protocol")),
        ("invalid ingress.ports.port (int)", policy("ingress: [{ports: [{protocol: TCP, port: 123456789}]}]"),
         Reject("spec.ingress[0].ports[0].port")),
        ("invalid ingress.ports.port (str)", policy("ingress: [{ports: [{protocol: TCP, port: '!@#$'}]}]"),
         Reject("spec.ingress[0].ports[0].port")),
        ("invalid ingress.from.podSelector", policy(&format!("ingress: [{{from: [{{podSelector: {bad_labels}}}]}}]")),
         Reject(bad_label_field("spec.ingress[0].from[0].podSelector"))),
        ("invalid egress.to.podSelector", policy(&format!("egress: [{{to: [{{podSelector: {bad_labels}}}]}}]")),
         Reject(bad_label_field("spec.egress[0].to[0].podSelector"))),
        ("invalid egress.ports.protocol", policy("egress: [{ports: [{protocol: ICMP, port: 80}]}]"),
         Reject("spec.egress[0].ports[0].protocol")),
        ("invalid egress.ports.port (int)", policy("egress: [{ports: [{protocol: TCP, port: 123456789}]}]"),
         Reject("spec.egress[0].ports[0].port")),
        ("invalid egress.ports.port (str)", policy("egress: [{ports: [{protocol: TCP, port: '!@#$'}]}]"),
         Reject("spec.egress[0].ports[0].port")),
        ("invalid ingress.from.namespaceSelector", policy(&format!("ingress: [{{from: [{{namespaceSelector: {bad_labels}}}]}}]")),
         Reject(bad_label_field("spec.ingress[0].from[0].namespaceSelector"))),
        ("missing cidr field", block("", "'192.168.3.0/24'"), Reject("spec.ingress[0].from[0].ipBlock.cidr")),
        ("invalid cidr format", block("192.168.5.6", "'192.168.3.0/24'"), Reject("spec.ingress[0].from[0].ipBlock.cidr")),
        ("invalid ipv6 cidr format", block("fd00:192:168::", "'fd00:192:168:3::/64'"), Reject("spec.ingress[0].from[0].ipBlock.cidr")),
        ("except field is an empty string", block("192.168.0.0/16", "''"), Reject("spec.ingress[0].from[0].ipBlock.except[0]")),
        ("except field is a space", block("192.168.0.0/16", "' '"), Reject("spec.ingress[0].from[0].ipBlock.except[0]")),
        ("except field is an invalid ip", block("192.168.0.0/16", "'300.300.300.300'"), Reject("spec.ingress[0].from[0].ipBlock.except[0]")),
        ("except IP is outside of CIDR range", block("192.168.8.0/24", "'192.168.9.1/32'"), Reject("spec.ingress[0].from[0].ipBlock.except[0]")),
        ("except IP is not strictly within CIDR range", block("192.168.0.0/24", "'192.168.0.0/24'"), Reject("spec.ingress[0].from[0].ipBlock.except[0]")),
        ("except IPv6 is outside of CIDR range", block("fd00:192:168:1::/64", "'fd00:192:168:2::/64'"), Reject("spec.ingress[0].from[0].ipBlock.except[0]")),
        ("invalid policyTypes", policy(&format!("egress: [{{to: [{V4_BLOCK}]}}]\n  policyTypes: [foo, bar]")),
         Reject("spec.policyTypes[0]")),
        ("too many policyTypes", policy(&format!("egress: [{{to: [{V4_BLOCK}]}}]\n  policyTypes: [foo, bar, baz]")),
         Reject("spec.policyTypes")),
        ("multiple ports defined, one port range is invalid",
         egress_ports("{protocol: UDP, port: 35000, endPort: 32768}, {port: 32000, endPort: 32768}"),
         Reject("spec.egress[0].ports[0].endPort")),
        ("endPort defined with named/string port",
         egress_ports("{protocol: UDP, port: dns, endPort: 32768}, {port: 32000, endPort: 32768}"),
         Reject("spec.egress[0].ports[0].endPort")),
        ("endPort defined without port defined", egress_ports("{protocol: TCP, endPort: 32768}"),
         Reject("spec.egress[0].ports[0].endPort")),
        ("port is greater than endPort", egress_ports("{protocol: SCTP, port: 35000, endPort: 32768}"),
         Reject("spec.egress[0].ports[0].endPort")),
        ("multiple invalid port ranges defined",
         egress_ports("{protocol: UDP, port: 35000, endPort: 32768}, {protocol: TCP, endPort: 32768}, {protocol: TCP, port: https, endPort: 32768}"),
         Reject("spec.egress[0].ports[0].endPort")),
        ("invalid endport range defined", egress_ports("{protocol: TCP, port: 30000, endPort: 65537}"),
         Reject("spec.egress[0].ports[0].endPort")),
    ]);
}

/// `ipBlock` as v1.33 parses it (`ParseCIDRSloppy`; `StrictIPCIDRValidation` is off there).
#[test]
fn ip_blocks_parse_as_v1_33_does() {
    let block = |cidr: &str, except: &str| {
        policy(&format!(
            "egress: [{{to: [{{ipBlock: {{cidr: '{cidr}', except: [{except}]}}}}]}}]"
        ))
    };
    let cidr = "spec.egress[0].to[0].ipBlock.cidr";
    let except = "spec.egress[0].to[0].ipBlock.except[0]";
    check(vec![
        ("host bits", block("192.168.1.77/24", ""), Accept),
        (
            "leading zeros",
            block("010.000.1.0/24", "'10.0.1.0/025'"),
            Accept,
        ),
        ("prefix leading zeros", block("10.0.0.0/08", ""), Accept),
        (
            "IPv4-mapped",
            block("::ffff:10.0.0.0/104", "'10.1.0.0/16'"),
            Reject(except),
        ),
        (
            "IPv4-mapped except",
            block("10.0.0.0/8", "'::ffff:10.1.0.0/112'"),
            Accept,
        ),
        (
            "other family except",
            block("::/0", "'10.0.0.0/8'"),
            Reject(except),
        ),
        ("leading space", block(" 10.0.0.0/8", ""), Reject(cidr)),
        ("trailing space", block("10.0.0.0/8 ", ""), Reject(cidr)),
        (
            "except with a space",
            block("10.0.0.0/8", "' 10.1.0.0/16'"),
            Reject(except),
        ),
        ("zone", block("fe80::1%eth0/64", ""), Reject(cidr)),
        ("five hex digits", block("fd00::00001/64", ""), Reject(cidr)),
        ("prefix too long", block("fd00::/129", ""), Reject(cidr)),
        ("signed prefix", block("10.0.0.0/+8", ""), Reject(cidr)),
    ]);
}

#[test]
fn policy_rules_beyond_upstream_tests() {
    let sel = |expr: &str| {
        policy(&format!(
            "ingress: [{{from: [{{podSelector: {{matchExpressions: [{expr}]}}}}]}}]"
        ))
    };
    let expr = "spec.ingress[0].from[0].podSelector.matchExpressions[0]";
    check(vec![
        ("policyTypes repeated", policy("policyTypes: [Ingress, Ingress]"), Accept),
        ("three valid policyTypes", policy("policyTypes: [Ingress, Egress, Ingress]"), Reject("spec.policyTypes")),
        ("empty protocol", policy("ingress: [{ports: [{protocol: '', port: 80}]}]"), Reject("spec.ingress[0].ports[0].protocol")),
        ("lowercase protocol", policy("ingress: [{ports: [{protocol: tcp}]}]"), Reject("spec.ingress[0].ports[0].protocol")),
        ("numeric string port", policy("ingress: [{ports: [{port: '80'}]}]"), Reject("spec.ingress[0].ports[0].port")),
        ("endPort below port", policy("ingress: [{ports: [{port: 80, endPort: 70}]}]"), Reject("spec.ingress[0].ports[0].endPort")),
        // Ports are checked before peers, ingress before egress, policyTypes last.
        ("ports before peers", policy("ingress: [{from: [{}], ports: [{port: 0}]}]"), Reject("spec.ingress[0].ports[0].port")),
        ("rules before policyTypes", policy("policyTypes: [Sideways]\n  egress: [{ports: [{port: 0}]}]"), Reject("spec.egress[0].ports[0].port")),
        ("selectors before the peer count", policy(&format!("ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8}}, podSelector: {{matchLabels: {{'{SELECTOR_KEY}': b}}}}}}]}}]")),
         Reject(format!("spec.ingress[0].from[0].podSelector.matchLabels[{SELECTOR_KEY}]").leak())),
        ("In without values", sel("{key: a, operator: In}"), Reject(format!("{expr}.values").leak())),
        ("Exists with values", sel("{key: a, operator: Exists, values: [b]}"), Reject(format!("{expr}.values").leak())),
        ("bad operator", sel("{key: a, operator: Equals, values: [b]}"), Reject(format!("{expr}.operator").leak())),
        ("bad key", sel("{key: 'a/b/c', operator: Exists}"), Reject(format!("{expr}.key").leak())),
        ("bad value", sel("{key: a, operator: In, values: ['-b']}"), Reject(format!("{expr}.values[0]").leak())),
        ("no podSelector at all", "kind: NetworkPolicy\nmetadata: {name: foo}\nspec: {}\n".into(), Accept),
    ]);
}

/// `ValidateObjectMeta` for a NetworkPolicy (the same code runs for Pods and Namespaces).
#[test]
fn object_meta_as_the_api_server_checks_it() {
    let meta = |m: &str| policy_with_meta(m, "ingress: []");
    let long = |n: usize| "a".repeat(n);
    let annotations = |value_len: usize| {
        meta(&format!(
            "{{name: foo, annotations: {{k: '{}'}}}}",
            long(value_len)
        ))
    };
    check(vec![
        ("subdomain name", meta("{name: a.b-c.d}"), Accept),
        ("uppercase name", meta("{name: Foo}"), Reject("metadata.name")),
        ("name of 253", meta(&format!("{{name: {}}}", [long(63), long(63), long(63), long(61)].join("."))), Accept),
        ("name of 254", meta(&format!("{{name: {}}}", [long(63), long(63), long(63), long(62)].join("."))), Reject("metadata.name")),
        ("name with a long label", meta(&format!("{{name: {}}}", long(100))), Accept),
        ("empty name", meta("{name: '', namespace: bar}"), Reject("metadata.name")),
        ("empty namespace is default", meta("{name: foo, namespace: ''}"), Accept),
        ("namespace not a label", meta("{name: foo, namespace: a.b}"), Reject("metadata.namespace")),
        ("namespace of 64", meta(&format!("{{name: foo, namespace: {}}}", long(64))), Reject("metadata.namespace")),
        ("generateName", meta("{name: foo, generateName: foo-}"), Accept),
        ("bad generateName", meta("{name: foo, generateName: Foo-}"), Reject("metadata.generateName")),
        ("negative generation", meta("{name: foo, generation: -1}"), Reject("metadata.generation")),
        ("bad label key", meta("{name: foo, labels: {'a b': c}}"), Reject("metadata.labels[a b]")),
        ("bad label value", meta(&format!("{{name: foo, labels: {{a: {}}}}}", long(64))), Reject("metadata.labels[a]")),
        ("uppercase annotation key", meta("{name: foo, annotations: {Example.COM/Key: v}}"), Accept),
        ("bad annotation key", meta("{name: foo, annotations: {'a/b/c': v}}"), Reject("metadata.annotations[a/b/c]")),
        ("annotations of 256 KiB", annotations(256 * 1024 - 1), Accept),
        ("annotations over 256 KiB", annotations(256 * 1024), Reject("metadata.annotations")),
        ("finalizers", meta("{name: foo, finalizers: [kubernetes, orphan, example.com/f]}"), Accept),
        ("unqualified finalizer", meta("{name: foo, finalizers: [mine]}"), Reject("metadata.finalizers[0]")),
        ("bad finalizer", meta("{name: foo, finalizers: ['-x/y']}"), Reject("metadata.finalizers")),
        ("orphan and foreground", meta("{name: foo, finalizers: [orphan, foregroundDeletion]}"), Reject("metadata.finalizers")),
        ("owner", meta("{name: foo, ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: d, uid: u, controller: true}]}"), Accept),
        ("Event owner written /v1", meta("{name: foo, ownerReferences: [{apiVersion: /v1, kind: Event, name: d, uid: u}]}"), Reject("metadata.ownerReferences[0]")),
        ("Event owner elsewhere", meta("{name: foo, ownerReferences: [{apiVersion: events.k8s.io/v1, kind: Event, name: d, uid: u}]}"), Accept),
        // Go's strings.ToLower maps 'İ' to 'i'.
        ("annotation key lowercased as Go does", meta("{name: foo, annotations: {İx: v}}"), Accept),
        ("owner without uid", meta("{name: foo, ownerReferences: [{apiVersion: v1, kind: Pod, name: d, uid: ''}]}"), Reject("metadata.ownerReferences[0].uid")),
        ("owner without version", meta("{name: foo, ownerReferences: [{apiVersion: apps/, kind: Pod, name: d, uid: u}]}"), Reject("metadata.ownerReferences[0].apiVersion")),
        ("Event owner", meta("{name: foo, ownerReferences: [{apiVersion: v1, kind: Event, name: d, uid: u}]}"), Reject("metadata.ownerReferences[0]")),
        ("two controllers", meta("{name: foo, ownerReferences: [{apiVersion: v1, kind: A, name: a, uid: a, controller: true}, {apiVersion: v1, kind: B, name: b, uid: b, controller: true}]}"),
         Reject("metadata.ownerReferences")),
    ]);
}

#[test]
fn namespaces_as_the_api_server_checks_them() {
    let ns = |m: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {m}\n");
    check(vec![
        ("label name", ns("{name: team-a}"), Accept),
        (
            "name of 63",
            ns(&format!("{{name: {}}}", "a".repeat(63))),
            Accept,
        ),
        (
            "name of 64",
            ns(&format!("{{name: {}}}", "a".repeat(64))),
            Reject("metadata.name"),
        ),
        ("dotted name", ns("{name: a.b}"), Reject("metadata.name")),
        (
            "namespace on a namespace is cleared",
            ns("{name: a, namespace: whatever}"),
            Accept,
        ),
        (
            "bad label",
            ns("{name: a, labels: {a: '!'}}"),
            Reject("metadata.labels[a]"),
        ),
        (
            "name label is overwritten first",
            ns("{name: a, labels: {kubernetes.io/metadata.name: '!'}}"),
            Accept,
        ),
        (
            "annotations over 256 KiB",
            ns(&format!(
                "{{name: a, annotations: {{k: '{}'}}}}",
                "v".repeat(256 * 1024)
            )),
            Reject("metadata.annotations"),
        ),
    ]);
}

/// A Pod `p` in `x` with these `spec` and `status` flow mappings.
fn pod(spec: &str, status: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\nstatus: {status}\n")
}

#[test]
fn pods_as_the_api_server_checks_them() {
    let ports = |ports: &str| {
        pod(
            &format!("{{containers: [{{name: c, ports: [{ports}]}}]}}"),
            "{}",
        )
    };
    let ips = |ips: &str| pod("{}", &format!("{{podIPs: [{ips}]}}"));
    check(vec![
        ("dotted name", "kind: Pod\nmetadata: {name: a.b, namespace: x}\n".into(), Accept),
        ("uppercase name", "kind: Pod\nmetadata: {name: A, namespace: x}\n".into(), Reject("metadata.name")),
        ("empty protocol is TCP", ports("{containerPort: 80, protocol: ''}"), Accept),
        ("lowercase protocol", ports("{containerPort: 80, protocol: udp}"), Reject("spec.containers[0].ports[0].protocol")),
        ("name twice in a container", ports("{name: web, containerPort: 80}, {name: web, containerPort: 81}"), Reject("spec.containers[0].ports[1].name")),
        ("name in two containers", pod("{containers: [{name: a, ports: [{name: web, containerPort: 80}]}, {name: b, ports: [{name: web, containerPort: 81}]}]}", "{}"), Accept),
        ("containerPort 0", ports("{containerPort: 0}"), Reject("spec.containers[0].ports[0].containerPort")),
        ("hostPort", ports("{containerPort: 80, hostPort: 8080}"), Accept),
        ("host network, hostPort unset", pod("{hostNetwork: true, containers: [{name: c, ports: [{containerPort: 80}]}]}", "{}"), Accept),
        ("host network, hostPort elsewhere", pod("{hostNetwork: true, containers: [{name: c, ports: [{containerPort: 80, hostPort: 81}]}]}", "{}"), Reject("spec.containers[0].ports[0].hostPort")),
        ("hostPort 70000", ports("{containerPort: 80, hostPort: 70000}"), Reject("spec.containers[0].ports[0].hostPort")),
        ("bad nodeName", pod("{nodeName: Node_1}", "{}"), Reject("spec.nodeName")),
        ("dual stack", ips("{ip: 10.0.0.1}, {ip: 'fd00::1'}"), Accept),
        ("leading zeros", ips("{ip: 010.0.0.1}"), Accept),
        ("two IPv4", ips("{ip: 10.0.0.1}, {ip: 10.0.0.2}"), Reject("status.podIPs[1]")),
        ("IPv4-mapped is IPv4", ips("{ip: '::ffff:10.0.0.1'}, {ip: 10.0.0.2}"), Reject("status.podIPs[1]")),
        ("three", ips("{ip: 10.0.0.1}, {ip: 'fd00::1'}, {ip: 'fd00::2'}"), Reject("status.podIPs[2]")),
        ("not an IP", ips("{ip: 10.0.0.1/32}"), Reject("status.podIPs[0]")),
        ("a space", ips("{ip: ' 10.0.0.1'}"), Reject("status.podIPs[0]")),
        ("podIP alone", pod("{}", "{podIP: 10.0.0.1}"), Accept),
        ("bad podIP", pod("{}", "{podIP: nope}"), Reject("status.podIP")),
    ]);
}

/// Where `podIP` and `podIPs[0]` differ, the v1 conversion keeps `podIP` alone; sloppy forms are
/// read as the API server reads them.
#[test]
fn pod_addresses_are_the_ones_the_api_server_stores() {
    let loaded = load_sources([(
        "t.yaml",
        pod(
            "{}",
            "{podIP: 10.0.0.9, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}",
        )
        .as_str(),
    )]);
    assert_eq!(
        loaded.snapshot.pods[0].ips,
        ["10.0.0.9".parse::<std::net::IpAddr>().unwrap()]
    );
    let loaded = load_sources([(
        "t.yaml",
        pod("{}", "{podIPs: [{ip: '::ffff:010.0.0.1'}]}").as_str(),
    )]);
    assert_eq!(
        loaded.snapshot.pods[0].ips,
        ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
}

/// An IPv4-mapped block matches IPv4 addresses, as Go's `IPNet.Contains` does.
#[test]
fn ipv4_mapped_blocks_are_ipv4() {
    let text = policy("egress: [{to: [{ipBlock: {cidr: '::ffff:10.0.0.0/104', except: ['::ffff:10.1.0.0/112']}}]}]");
    let loaded = load_sources([("t.yaml", text.as_str())]);
    let rule = &loaded.snapshot.policies[0].egress.as_ref().unwrap()[0];
    assert_eq!(
        rule.peers[0],
        crate::model::Peer::IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        }
    );
}

/// `SetDefaults_Namespace` sets `kubernetes.io/metadata.name` to the name, whatever was written.
#[test]
fn the_namespace_name_label_is_the_name() {
    let text = "kind: Namespace\nmetadata: {name: a, labels: {kubernetes.io/metadata.name: b}}\n";
    let loaded = load_sources([("t.yaml", text)]);
    assert_eq!(
        loaded.snapshot.namespaces["a"].labels[NAMESPACE_NAME_LABEL],
        "a"
    );
}

/// Objects at the API server's limits load: a 3 MiB request with a 253-character name, 256 KiB
/// of annotations and 63-character label values; one byte more is rejected by name.
#[test]
fn objects_at_the_size_limits() {
    use super::size::{request_body_bytes, MAX_REQUEST_BODY_BYTES};
    let name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    // 256 KiB of annotations, keys and values: 16 keys of 2 characters.
    let value = "v".repeat(256 * 1024 / 16 - 2);
    let annotations: Vec<String> = (0..16).map(|i| format!("k{i:x}: {value}")).collect();
    let object = |labels: &[String]| {
        format!(
            "kind: NetworkPolicy\nmetadata: {{name: {name}, namespace: bar, annotations: {{{}}}}}\n\
             spec: {{podSelector: {{matchLabels: {{{}}}}}}}\n",
            annotations.join(", "),
            labels.join(", ")
        )
    };
    let size = |text: &str| request_body_bytes(&serde_yaml_ng::from_str(text).unwrap());
    for extra in [0, 1] {
        // Fill with labels `kNNNNNN: v...`: 12 bytes and the value's, and a comma after the first.
        let mut labels: Vec<String> = Vec::new();
        let mut left = MAX_REQUEST_BODY_BYTES + extra - size(&object(&labels));
        while left > 0 {
            let cost = if labels.is_empty() { 12 } else { 13 };
            let len = if left - cost <= 63 {
                left - cost
            } else {
                (left - cost - 13).min(63)
            };
            labels.push(format!("k{:06}: '{}'", labels.len(), "v".repeat(len)));
            left -= cost + len;
        }
        let text = object(&labels);
        assert_eq!(size(&text), MAX_REQUEST_BODY_BYTES + extra);
        let loaded = load_sources([("t.yaml", text.as_str())]);
        if extra == 0 {
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        } else {
            let identity = Some(("NetworkPolicy", "bar", name.as_str()));
            assert_eq!(loaded.errors[0].identity(), identity);
            assert!(loaded.snapshot.policies.is_empty());
        }
    }
}
