//! Differential test of the XDP program: `portcullis_testkit::differential` (random policies as
//! deltas through generation switches, random frames, the evaluator plus a flow-table model)
//! against one real program through BPF_PROG_TEST_RUN. 100k packets by default;
//! `PORTCULLIS_DIFF_PACKETS=10000000` for the long run.

use portcullis_gateway::{Datapath, Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::differential::{self, Decision, DiffDatapath, DiffPacket, Shape};
use portcullis_testkit::*;

const CLUSTER: &str = "pcl-dc";
const EXTERNAL: &str = "pcl-de";

/// One program for the whole run: every snapshot after the first goes in as a delta (stable
/// ids, reused groups) through a generation switch.
struct XdpProgram {
    gw: Gateway,
    cluster: u32,
    external: u32,
}

impl DiffDatapath for XdpProgram {
    fn apply(&mut self, tables: &GatewayTables) {
        self.gw.apply(tables).expect("apply");
        self.gw.clear_flows().expect("clear flows");
    }

    fn judge(&mut self, p: &DiffPacket) -> Decision {
        let leg = if p.cluster_leg {
            self.cluster
        } else {
            self.external
        };
        let run = self.gw.test_run(TestProgram::Gateway, leg, &p.bytes, 1);
        match run.expect("test run").action {
            XDP_DROP => Decision::Drop,
            // The program passes what it does not judge as it passes what it allows.
            XDP_PASS if p.shape == Shape::NotIp => Decision::NotIp,
            XDP_PASS => Decision::Pass,
            other => panic!("unexpected XDP action {other}"),
        }
    }
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn xdp_program_agrees_with_the_evaluator_on_random_policies_and_packets() {
    require_root();
    let ns = NetNs::new("diff");
    ns.run(|| {
        sh(&format!(
            "ip link add {CLUSTER} type veth peer name {CLUSTER}p && ip link add {EXTERNAL} type veth peer name {EXTERNAL}p && \
             for i in {CLUSTER} {CLUSTER}p {EXTERNAL} {EXTERNAL}p; do ip link set $i up; done"
        ));
        let gw = Gateway::load(GatewayOptions {
            cluster_iface: CLUSTER.into(),
            external_iface: EXTERNAL.into(),
            ..Default::default()
        })
        .expect("load gateway");
        let (cluster, external) = (ifindex(CLUSTER), ifindex(EXTERNAL));
        differential::run(&mut XdpProgram {
            gw,
            cluster,
            external,
        });
    });
}
