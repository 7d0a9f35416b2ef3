//! CI smoke test: the harness starts on a tiny configuration (10 ipBlocks, 1 s per contender and
//! frame size, three contenders and the four AF_XDP ones, a few probes, 4 policy changes for latency and 4 per survival phase,
//! 200 idle flows under a flood of a fifth of the flow table) and writes a well-formed result JSON
//! and plots. Asserts shape and the idle-flow probe's own checks, never speed. Needs root (network
//! namespaces, XDP); skipped otherwise.
use std::process::Command;

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn tiny_run_writes_wellformed_results() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (network namespaces, XDP)"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let run = Command::new(env!("CARGO_BIN_EXE_portcullis-perf"))
        .args([
            "--sizes",
            "10",
            "--duration",
            "1",
            "--repeats",
            "1",
            "--contenders",
            "bare-pass,bare-redirect,portcullis-xdp,portcullis-xdp-established,portcullis-afxdp,\
             portcullis-afxdp-established,portcullis-hybrid,portcullis-hybrid-established",
            "--probes",
            "20",
            "--targets-log2",
            "10",
            "--frame-sizes",
            "64,1500",
            "--change-sizes",
            "10",
            "--latency-changes",
            "4",
            "--survival-changes",
            "4",
            "--idle-flows",
            "200",
            "--idle-flood",
            "0.2",
            // Every machine of this project has at least two CPUs: the gateway's alone.
            "--cpus",
            "0,1,0",
            "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the harness");
    let pid = run.id();
    let run = run.wait_with_output().expect("harness output");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "harness failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a result JSON");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    for key in [
        "schema",
        "machine",
        "load",
        "config",
        "figures",
        "ratios",
        "ratios_per_core",
        "idle_flows",
        "idle_flows_survived",
        "idle_flows_detail",
        "notes",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(
        v["config"]["cpus"],
        serde_json::json!({"generator": 0, "gateway": 1, "sink": 0})
    );
    for key in ["cpu_model", "cores", "kernel"] {
        assert!(v["machine"][key].is_string(), "machine.{key}");
    }
    let figures = v["figures"].as_array().unwrap();
    for f in figures {
        assert!(f["contender"].is_string() && f["metric"].is_string() && f["unit"].is_string());
        assert!(f["ip_blocks"].is_u64() && f["prefixes"].is_u64());
        assert!(f["value"].as_f64().is_some_and(f64::is_finite), "{f}");
    }
    let has = |c: &str, m: &str| {
        figures
            .iter()
            .any(|f| f["contender"] == c && f["metric"] == m)
    };
    assert!(has("bare-pass", "forwarded_pps"));
    assert!(has("portcullis-xdp", "forwarded_pps"));
    assert!(has("portcullis-xdp", "dropped_pps"));
    assert!(has("portcullis", "test_run_established_flow_repeat1"));
    assert!(has("portcullis-xdp", "verdict_agreement"));
    // The AF_XDP contenders forward and judge as the XDP one does (shape only: no speed).
    for c in [
        "portcullis-afxdp",
        "portcullis-afxdp-established",
        "portcullis-hybrid",
        "portcullis-hybrid-established",
    ] {
        let agreement = figures
            .iter()
            .find(|f| f["contender"] == c && f["metric"] == "verdict_agreement")
            .and_then(|f| f["value"].as_f64());
        assert_eq!(agreement, Some(1.0), "{c}: verdict agreement");
        assert!(has(c, "forwarded_per_core"), "{c}: no forwarded_per_core");
    }
    assert!(has("portcullis", "compile_time"));
    assert!(has("portcullis", "test_run_established_flow"));
    assert!(v["load"]["before"].is_array() && v["load"]["after"].is_array());
    let frames = |c: &str| {
        figures
            .iter()
            .filter(|f| f["contender"] == c && f["metric"] == "forwarded_pps")
            .map(|f| f["frame_bytes"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(frames("portcullis-xdp"), [64, 1500]);
    for m in [
        "change_latency_p50",
        "change_latency_p99",
        "change_compile_time_p50",
        "change_apply_time_p50",
        "survival_paced_lost",
        "survival_saturating_lost",
    ] {
        assert!(has("portcullis-xdp", m), "missing {m}");
    }
    // The idle flows: every one passed right after opening, every control probe was dropped, and
    // the survivors are a count of them.
    let idle = &v["idle_flows_detail"];
    assert_eq!(v["idle_flows"], 200, "{idle}");
    assert!(v["idle_flows_survived"].as_u64().is_some_and(|s| s <= 200));
    assert_eq!(idle["passed_before_flood"], 200, "{idle}");
    assert_eq!(idle["control_dropped"], idle["control_probes"], "{idle}");
    assert_eq!(
        idle["tcp"].as_u64().unwrap() + idle["udp"].as_u64().unwrap(),
        200
    );
    assert!(
        idle["flood_capacity_multiple"].as_f64().unwrap() >= 0.2,
        "{idle}"
    );
    let per_core = v["ratios_per_core"].as_array().unwrap();
    for ratio in [
        "portcullis-xdp/bare-pass",
        "portcullis-xdp/bare-redirect",
        "bare-pass/bare-redirect",
        "portcullis-afxdp/portcullis-xdp",
        "portcullis-afxdp-established/portcullis-xdp-established",
        "portcullis-hybrid/portcullis-xdp",
        "portcullis-hybrid-established/portcullis-xdp-established",
    ] {
        assert!(
            per_core.iter().any(|r| r["ratio"] == ratio),
            "missing per-core ratio {ratio}"
        );
    }
    let svgs = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .count();
    assert_eq!(svgs, 2);
    // Every namespace the harness made is gone.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("pcperf-{pid}-")));
}
