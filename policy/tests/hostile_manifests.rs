//! Manifests built to hurt a loader: each is rejected by document or object with a clear error,
//! or loads correctly, and does so quickly (the time bounds are 10-50 times what this 2-core VM
//! takes, so a quadratic path fails them). Memory is bounded by the binary's test
//! (`cli/tests/hostile_inputs.rs`), which measures peak RSS.

use std::time::{Duration, Instant};

use portcullis_policy::load::{load_sources, Loaded};
use portcullis_policy::probe::parse_probe_specs;

const GOOD: &str =
    "kind: NetworkPolicy\nmetadata: {name: good, namespace: x}\nspec: {podSelector: {}}\n";

/// A NetworkPolicy `bad` in `x` with `extra` lines appended, then the good policy.
fn bad_then_good(extra: &str) -> String {
    format!("kind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\nspec: {{podSelector: {{}}}}\n{extra}\n---\n{GOOD}")
}

/// Loads `text` within `limit`.
fn load_within(text: &str, limit: Duration) -> Loaded {
    let started = Instant::now();
    let loaded = load_sources([("hostile.yaml", text)]);
    let took = started.elapsed();
    assert!(took < limit, "{took:?} for {} bytes", text.len());
    loaded
}

fn messages(loaded: &Loaded) -> Vec<String> {
    loaded.errors.iter().map(|e| e.to_string()).collect()
}

fn policy_names(loaded: &Loaded) -> Vec<&str> {
    let names = loaded.snapshot.policies.iter().map(|p| p.name.as_str());
    names.collect()
}

#[test]
fn billion_laughs_is_rejected_and_the_next_document_loads() {
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb += &format!("a{i}: &a{i} [{refs}]\n");
    }
    let loaded = load_within(&bad_then_good(&bomb), Duration::from_secs(5));
    assert_eq!(
        messages(&loaded),
        ["hostile.yaml doc 1: not valid YAML: repetition limit exceeded"]
    );
    assert_eq!(policy_names(&loaded), ["good"]);
}

/// Few alias jumps, each copying a large node: within serde_yaml_ng's repetition limit, 10 GB
/// and a minute without the loader's budget.
#[test]
fn aliases_copying_large_nodes_run_out_of_budget() {
    let n = 10_000;
    let bomb = format!(
        "a: &a [{}]\nb: [{}]\n",
        vec!["x"; n].join(","),
        vec!["*a"; n].join(",")
    );
    let loaded = load_within(&bad_then_good(&bomb), Duration::from_secs(5));
    let errors = messages(&loaded);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("hostile.yaml doc 1: not valid YAML: b["),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("YAML aliases copy what they name")
            && errors[0].ends_with("the rest of the text is not read"),
        "{errors:?}"
    );
    assert!(loaded.snapshot.policies.is_empty());
}

/// Legitimate anchors (one selector reused) load as the API server would see them expanded.
#[test]
fn modest_aliases_load() {
    let text = "kind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n\
                spec:\n  podSelector: &sel {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: *sel}]}]\n";
    let loaded = load_within(text, Duration::from_secs(1));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.snapshot.policies[0].name, "a");
}

/// 100,000 levels of `[` took libyaml 35 s; the scanner refuses them before it runs.
#[test]
fn deep_nesting_is_refused_before_parsing() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let n = 100_000;
        let text = format!("{GOOD}---\n{}1{}\n", open.repeat(n), close.repeat(n));
        let loaded = load_within(&text, Duration::from_secs(1));
        assert_eq!(
            messages(&loaded),
            [
                "hostile.yaml doc 2: flow collections nested deeper than 128 levels at line 5; \
              the rest of the text is not read"
            ]
        );
        assert_eq!(policy_names(&loaded), ["good"], "documents before it load");
    }
    let shallow = bad_then_good(&format!("x: {}1{}", "[".repeat(100), "]".repeat(100)));
    let loaded = load_within(&shallow, Duration::from_secs(1));
    assert_eq!(policy_names(&loaded), ["bad", "good"]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
}

#[test]
fn duplicate_keys_reject_their_document_only() {
    let loaded = load_within(
        &bad_then_good("spec: {podSelector: {}}"),
        Duration::from_secs(1),
    );
    assert_eq!(
        messages(&loaded),
        ["hostile.yaml doc 1: not valid YAML: duplicate entry with key \"spec\""]
    );
    assert_eq!(policy_names(&loaded), ["good"]);
}

/// A UTF-8 byte-order mark opens the stream; libyaml alone read it as content.
#[test]
fn a_utf8_byte_order_mark_is_skipped() {
    let loaded = load_within(&format!("\u{feff}{GOOD}"), Duration::from_secs(1));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(policy_names(&loaded), ["good"]);
}

/// 100,000 excepts in one ipBlock: a 1.5 MB object, under the 3 MiB limit, loads whole.
#[test]
fn an_ip_block_with_100k_excepts_loads() {
    let excepts: Vec<String> = (0..100_000u32)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let text = format!(
        "kind: NetworkPolicy\nmetadata: {{name: wide, namespace: x}}\nspec:\n  podSelector: {{}}\n  \
         egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{}]}}}}]}}]\n",
        excepts.join(", ")
    );
    let loaded = load_within(&text, Duration::from_secs(5));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let rule = &loaded.snapshot.policies[0].egress.as_ref().unwrap()[0];
    match &rule.peers[0] {
        portcullis_policy::model::Peer::IpBlock { except, .. } => assert_eq!(except.len(), 100_000),
        other => panic!("{other:?}"),
    }
}

/// Over the 3 MiB request limit: rejected by name, the rest loads.
#[test]
fn an_object_over_the_request_limit_is_rejected_by_name() {
    let text = bad_then_good(&format!(
        "metadata: {{name: huge, namespace: x, annotations: {{a: {}}}}}",
        "v".repeat(3 << 20)
    ))
    .replacen("metadata: {name: bad, namespace: x}\n", "", 1);
    let loaded = load_within(&text, Duration::from_secs(5));
    let errors = messages(&loaded);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("hostile.yaml doc 1 (NetworkPolicy x/huge): ")
            && errors[0].contains("more than the API server's 3145728"),
        "{errors:?}"
    );
    assert_eq!(policy_names(&loaded), ["good"]);
}

/// Many valid policies load completely (the binary's test runs 1M under a memory bound).
#[test]
fn many_policies_load() {
    let n = 20_000;
    let mut text = String::new();
    for i in 0..n {
        text += &format!(
            "---\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{}}}\nspec: {{podSelector: {{matchLabels: {{app: a{i}}}}}, ingress: [{{ports: [{{port: {}}}]}}]}}\n",
            i % 100,
            1 + i % 60_000
        );
    }
    let loaded = load_within(&text, Duration::from_secs(20));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors.first());
    assert_eq!(loaded.snapshot.policies.len(), n);
}

/// A probe file gets the same bounds: deep nesting and alias copies are refused by line.
#[test]
fn probe_files_are_bounded_too() {
    let deep = format!("- {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let started = Instant::now();
    let error = parse_probe_specs(&deep).unwrap_err();
    assert!(
        error.contains("nested deeper than 128 levels at line 1"),
        "{error}"
    );
    let from = "a".repeat(100_000);
    let mut bomb = format!("- {{from: &f {from}, to: x/b, port: 1, protocol: TCP}}\n");
    bomb += &"- {from: *f, to: x/b, port: 1, protocol: TCP}\n".repeat(10_000);
    let error = parse_probe_specs(&bomb).unwrap_err();
    assert!(
        error.contains("YAML aliases copy what they name"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let probes =
        parse_probe_specs("\u{feff}- {from: x/a, to: x/b, port: 80, protocol: TCP}\n").unwrap();
    assert_eq!(probes.len(), 1);
}
