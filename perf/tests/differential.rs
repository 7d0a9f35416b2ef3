//! CI run of `portcullis-differential` (`perf/differential`): 100k packets per datapath (the
//! gateway's XDP program, the node hook, the AF_XDP engine), each over 50 policy updates, must end
//! with the three summary lines and 0 disagreements. Needs root; skipped otherwise.
use std::process::Command;

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn every_datapath_agrees_with_the_evaluator_on_100k_packets() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (BPF)");
    let run = Command::new(env!("CARGO_BIN_EXE_portcullis-differential"))
        .args(["--datapath", "all", "--packets", "100000"])
        .output()
        .expect("run portcullis-differential");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{}\n{stdout}\n{stderr}", run.status);
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
    let want: Vec<String> = ["afxdp", "node", "gateway"]
        .iter()
        .map(|d| format!("differential: {d} 100000 packets, 50 updates, 0 disagreements"))
        .collect();
    assert_eq!(tail, want, "{stdout}\n{stderr}");
}
