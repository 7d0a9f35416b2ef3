//! End to end with the policy compiler: the seed ipBlock case of the shared conformance suite
//! (`005-seed-egress-ipblock-except`) is loaded, compiled with `compile_gateway`, applied, and
//! every probe between a pod and an external address is replayed as a packet through
//! BPF_PROG_TEST_RUN on the leg it would enter.

use std::net::IpAddr;

use portcullis_gateway::{Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_policy::compile::compile_gateway;
use portcullis_policy::load::load_sources;
use portcullis_testkit::*;

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\": \"");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {line}"))
        + key.len();
    let len = line[start..].find('"').unwrap();
    &line[start..start + len]
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn seed_ipblock_case_compiled_and_enforced() {
    require_root();
    let dir = shared_dir().join("conformance/cases/005-seed-egress-ipblock-except");
    if !dir.exists() {
        eprintln!("skipped: {} not present", dir.display());
        return;
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read case");
    let (cluster, policies, probes) = (
        read("cluster.yaml"),
        read("policies.yaml"),
        read("probes.yaml"),
    );
    let loaded = load_sources([
        ("cluster.yaml", cluster.as_str()),
        ("policies.yaml", policies.as_str()),
    ]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors.len());
    let tables = compile_gateway(&loaded.snapshot).expect("compile");
    let pod_ip = |name: &str| -> Option<IpAddr> {
        let (ns, pod) = name.split_once('/')?;
        loaded
            .snapshot
            .pods
            .iter()
            .find(|p| p.namespace == ns && p.name == pod)
            .and_then(|p| p.ips.first().copied())
    };

    let ns = NetNs::new("seed");
    ns.run(|| {
        sh(
            "ip link add sc type veth peer name scp && ip link add se type veth peer name sep && \
            for i in sc scp se sep; do ip link set $i up; done",
        );
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: "sc".into(),
            external_iface: "se".into(),
            ..Default::default()
        })
        .expect("load");
        gw.apply(&tables).expect("apply");
        let (c, e) = (ifindex("sc"), ifindex("se"));
        let mut checked = 0;
        let mut failures = Vec::new();
        for (i, line) in probes.lines().filter(|l| l.starts_with("- {")).enumerate() {
            let (from, to) = (field(line, "from"), field(line, "to"));
            let port: u16 = line
                .split("\"port\": ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.trim().parse().ok())
                .expect("port");
            let proto = field(line, "protocol");
            let allow = field(line, "expect") == "allow";
            // Only probes crossing the edge: pod → address (cluster leg) or address → pod.
            let (src, dst, leg) = match (pod_ip(from), pod_ip(to)) {
                (Some(s), None) => (s, to.parse::<IpAddr>().unwrap(), c),
                (None, Some(d)) => (from.parse::<IpAddr>().unwrap(), d, e),
                _ => continue,
            };
            let (IpAddr::V4(s4), IpAddr::V4(d4)) = (src, dst) else {
                continue;
            };
            let sport = 30000 + i as u16;
            let l4 = match proto {
                "TCP" => tcp(sport, port, TCP_SYN),
                "UDP" => udp(sport, port),
                "SCTP" => sctp(sport, port),
                other => panic!("protocol {other}"),
            };
            let number = match proto {
                "TCP" => 6,
                "UDP" => 17,
                _ => 132,
            };
            let pkt = frame_v4(
                &[],
                ipv4(&s4.to_string(), &d4.to_string(), number, &[], 0, &l4),
            );
            let out = gw
                .test_run(TestProgram::Gateway, leg, &pkt, 1)
                .expect("run");
            let want = if allow { XDP_PASS } else { XDP_DROP };
            if out.action != want {
                failures.push(line.to_string());
            }
            checked += 1;
        }
        eprintln!("{checked} edge probes replayed");
        assert!(checked >= 10);
        assert!(failures.is_empty(), "wrong verdicts: {failures:#?}");
    });
}
