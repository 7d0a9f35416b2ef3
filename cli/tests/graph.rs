//! `portcullis graph` as a user runs it on the shipped examples: DOT, SVG and HTML output, focus,
//! the probe overlay, and the HTML page loaded and clicked in a real headless browser (Debian's
//! chromium).

use std::path::Path;
use std::process::Command;

mod common;
use common::portcullis;

/// Standard output of a graph of the examples that must succeed.
fn graph(extra: &[&str]) -> String {
    let mut args = vec!["graph", "--manifests", "configs/examples"];
    args.extend(extra);
    let out = portcullis(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

const API_TO_DATABASE: &str =
    r#""pod:app-stack/api" -> "pod:app-stack/database" [label="TCP/5432"];"#;

#[test]
fn dot_has_clusters_marks_and_the_allowed_edges_only() {
    let dot = graph(&["--output", "dot"]);
    assert!(dot.starts_with("digraph portcullis {"), "{dot}");
    for namespace in ["app-stack", "prod", "prod-apps", "kube-system", "x"] {
        assert!(
            dot.contains(&format!("subgraph \"cluster_{namespace}\"")),
            "{namespace}"
        );
    }
    assert!(dot.contains(API_TO_DATABASE), "{dot}");
    assert!(dot
        .contains(r#""pod:app-stack/api" -> "pod:kube-system/coredns" [label="TCP/53, UDP/53"];"#));
    assert!(!dot.contains(r#""pod:app-stack/frontend" -> "pod:app-stack/database""#));
    assert!(!dot.contains(r#""pod:admin/shell" -> "pod:prod/web""#));
    assert!(dot.contains(r#""pod:admin/monitor" -> "pod:prod/web" [label="any"];"#));
    // prod-apps denies everything by default; x does not.
    assert!(dot.contains(r#"label="prod-apps";"#));
    assert!(dot.contains(r#"label="x (no default deny)";"#));
    assert!(dot.contains(r#""pod:x/b" [label="b\n(selected by no policy)""#));
    assert!(dot.contains(
        r#""net:192.168.1.0/24 except 192.168.1.10/32" [shape=box, label="192.168.1.0/24 except 192.168.1.10/32"];"#
    ));
    assert!(
        dot.contains(r#""pod:x/a" -> "net:192.168.1.0/24 except 192.168.1.10/32" [label="any"];"#)
    );
}

#[test]
fn focus_and_probes() {
    let dot = graph(&[
        "--pod",
        "app-stack/database",
        "--probes",
        "configs/demo-probes.yaml",
    ]);
    assert!(dot.contains(API_TO_DATABASE), "{dot}");
    let edges: Vec<&str> = dot.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(
        edges.iter().all(|e| e.contains("app-stack/database")),
        "{dot}"
    );
    assert!(!dot.contains("cluster_prod-apps"), "{dot}");
    assert!(dot.contains(
        r#""pod:app-stack/frontend" -> "pod:app-stack/database" [style=dashed, color=red, fontcolor=red, label="probe TCP/5432 deny"];"#
    ));
    let namespace = graph(&["--namespace", "prod-apps"]);
    assert!(!namespace.contains(" -> "), "{namespace}");
    let unknown = portcullis(&[
        "graph",
        "--manifests",
        "configs/examples",
        "--namespace",
        "nowhere",
    ]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("namespace nowhere"));
}

#[test]
fn svg_draws_every_pod() {
    let svg = graph(&["--output", "svg"]);
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
    for pod in [
        "api", "database", "frontend", "coredns", "billing", "ledger", "monitor",
    ] {
        assert!(svg.contains(&format!(">{pod}</text>")), "{pod}");
    }
    assert!(svg.contains(r#"data-from="pod:app-stack/api" data-to="pod:app-stack/database""#));
    assert!(svg.contains("no default deny"));
}

/// The graph's JSON embedded in the page.
fn embedded_json(html: &str) -> serde_json::Value {
    let start = r#"<script type="application/json" id="graph-data">"#;
    let from = html.find(start).expect("embedded data") + start.len();
    let to = from + html[from..].find("</script>").expect("end of data");
    serde_json::from_str(&html[from..to]).expect("valid JSON")
}

#[test]
fn html_embeds_the_graph_and_needs_nothing_online() {
    let html = graph(&["--output", "html"]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Nothing is fetched: the only address is the SVG namespace name.
    let offline = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!offline.contains("http://") && !offline.contains("https://"));
    let data = embedded_json(&html);
    let api_to_database = data["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "pod:app-stack/api" && e["to"] == "pod:app-stack/database")
        .expect("api -> database");
    assert_eq!(api_to_database["ports"], "TCP/5432");
    let rules: Vec<String> = api_to_database["admitted_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{} {}[{}]", a["policy"], a["direction"], a["rule"]))
        .collect();
    assert_eq!(
        rules,
        [
            r#""app-stack/api-policy" "egress"[0]"#,
            r#""app-stack/db-policy" "ingress"[0]"#
        ]
    );
}

/// Runs Debian's chromium headless as root can, with a fresh profile and no network chatter.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("timeout and chromium run")
}

fn chromium_installed() -> bool {
    Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn html_page_works_in_a_headless_browser() {
    if !chromium_installed() {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_BROWSER").is_none(),
            "PORTCULLIS_REQUIRE_BROWSER is set but chromium is not installed (apt-get install chromium)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium to run this test)");
        return;
    }
    let html = graph(&["--output", "html", "--probes", "configs/demo-probes.yaml"]);
    let work = tempfile::tempdir().expect("temporary directory");
    let page = work.path().join("graph.html");
    std::fs::write(&page, html).expect("page written");
    let url = format!("file://{}#selftest", page.display());

    let dumped = chromium(&work.path().join("profile-dom"), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dumped.stdout);
    assert!(
        dumped.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(
        dom.contains(
            r#"<div id="selftest">selftest: pass (13 pods drawn; clicked pod:app-stack/api)</div>"#
        ),
        "self-test did not pass:\n{dom}"
    );
    assert!(
        dom.contains(r#"<pre id="errors"></pre>"#),
        "script errors:\n{dom}"
    );
    // The click filled the side panel with the policies selecting the pod.
    assert!(
        dom.contains("<li>app-stack/api-policy (ingress)</li>"),
        "{dom}"
    );
    assert!(
        dom.contains("app-stack/db-policy ingress[0]: TCP/5432"),
        "{dom}"
    );

    // The screenshot is kept as a test artifact under target/.
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graph-test.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = chromium(
        &work.path().join("profile-shot"),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1200,800",
            &url,
        ],
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "blank screenshot"
    );
    eprintln!("screenshot: {}", screenshot.display());
}
