//! Every conformance case's cluster and probes, built as a lab with no enforcement: every probe must
//! be observed as allow (the lab itself never blocks), and each case must stay fast. Needs root.
//! The cases live in `../shared/conformance/cases` beside the repository; without them this test
//! says so and checks nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use portcullis_lab::{Lab, LabOptions, Verdict};
use portcullis_policy::load::load_sources;
use portcullis_policy::probe::parse_probes;

fn cases_dir() -> Option<PathBuf> {
    let dir = portcullis_testkit::shared_dir().join("conformance/cases");
    dir.is_dir().then_some(dir)
}

#[test]
fn conformance_cases_all_allow_without_enforcement() {
    let Some(dir) = cases_dir() else {
        eprintln!("no shared/conformance/cases (beside the repository or in $PORTCULLIS_SHARED): nothing to check");
        return;
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("probes.yaml").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut total_probes = 0;
    let all = Instant::now();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let read = |f: &str| std::fs::read_to_string(case.join(f)).unwrap_or_default();
        let (cluster, policies) = (read("cluster.yaml"), read("policies.yaml"));
        let loaded = load_sources([
            ("cluster.yaml", cluster.as_str()),
            ("policies.yaml", policies.as_str()),
        ]);
        let probes = parse_probes(&read("probes.yaml")).unwrap();
        total_probes += probes.len();
        let t = Instant::now();
        let lab = Lab::build(&loaded.snapshot, &probes, LabOptions::default())
            .unwrap_or_else(|e| panic!("{name}: build: {e}"));
        let built = t.elapsed();
        let results = lab.probe_all(&probes);
        drop(lab);
        let took = t.elapsed();
        eprintln!(
            "{name}: {} pods, {} probes, build {built:?}, total {took:?}",
            loaded.snapshot.pods.len(),
            probes.len()
        );
        if took > slowest.0 {
            slowest = (took, name.clone());
        }
        for (p, r) in probes.iter().zip(results) {
            match r {
                Ok(o) if o.verdict == Verdict::Allow => {}
                Ok(o) => failures.push(format!("{name}: {p}: {} ({})", o.verdict, o.detail)),
                Err(e) => failures.push(format!("{name}: {p}: error {e}")),
            }
        }
    }
    eprintln!(
        "{} cases, {total_probes} probes in {:?}; slowest {} in {:?}",
        cases.len(),
        all.elapsed(),
        slowest.1,
        slowest.0
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        slowest.0 < Duration::from_secs(10),
        "{} took {:?}",
        slowest.1,
        slowest.0
    );
}

/// The largest case with every forwarded packet dropped in the node and the gateway: every probe
/// except a pod's probe to itself times out (twice), and the whole run still stays under 10 s.
#[test]
fn deny_heavy_case_stays_fast() {
    let Some(dir) = cases_dir() else {
        eprintln!("no shared/conformance/cases (beside the repository or in $PORTCULLIS_SHARED): nothing to check");
        return;
    };
    let case = dir.join("032-ingress-protocol-only-tcp");
    let read = |f: &str| std::fs::read_to_string(case.join(f)).unwrap_or_default();
    let cluster = read("cluster.yaml");
    let loaded = load_sources([("cluster.yaml", cluster.as_str())]);
    let probes = parse_probes(&read("probes.yaml")).unwrap();
    let t = Instant::now();
    let lab = Lab::build(&loaded.snapshot, &probes, LabOptions::default()).unwrap();
    let script = std::env::temp_dir().join(format!("{}-dropall.nft", lab.id()));
    std::fs::write(
        &script,
        "table inet pcltest {\n chain f {\n  type filter hook forward priority 0; policy drop;\n }\n}\n",
    )
    .unwrap();
    for ns in [lab.nodes()[0].netns.clone(), lab.gateway().netns.clone()] {
        let mut cmd = std::process::Command::new("nft");
        cmd.arg("-f").arg(&script);
        let out = lab.output_in(&ns, cmd).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&script);
    let results = lab.probe_all(&probes);
    drop(lab);
    let took = t.elapsed();
    let mut denied = 0;
    for (p, r) in probes.iter().zip(results) {
        let o = r.unwrap();
        let own = p.from == p.to;
        assert_eq!(
            o.verdict == Verdict::Allow,
            own,
            "{p}: {} ({})",
            o.verdict,
            o.detail
        );
        denied += usize::from(!own);
    }
    eprintln!(
        "{} probes, {denied} denied, build+probe+teardown {took:?}",
        probes.len()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}
