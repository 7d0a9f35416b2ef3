//! The three datapaths behind `portcullis_testkit::differential`'s traits, as their own tests
//! drive them (gateway/tests/differential.rs, afxdp/tests/differential.rs).

use std::process::Command;

use anyhow::{bail, Context, Result};
use portcullis_afxdp::flows::LocalFlows;
use portcullis_afxdp::pipeline::{new_packet, Outcome, Pipeline};
use portcullis_afxdp::tables::PolicyTables;
use portcullis_common::{CHECK_EGRESS_OF_SRC, CHECK_INGRESS_OF_DST};
use portcullis_ebpf_common::parse::Packet;
use portcullis_gateway::{Gateway, GatewayOptions, XDP_DROP, XDP_PASS};
use portcullis_node::{Datapath as _, NodeHook, NodeOptions, TC_ACT_OK, TC_ACT_SHOT};
use portcullis_policy::compile::node::NodeTables;
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::differential::node::NodeDiffDatapath;
use portcullis_testkit::differential::{Decision, DiffDatapath, DiffPacket, Shape};

const CLUSTER: &str = "pcd-cluster";
const EXTERNAL: &str = "pcd-external";

/// The gateway's XDP program on two veths of the calling process's network namespace: one
/// program for the whole run, every snapshot after the first applied as a delta.
pub struct Xdp {
    gw: Gateway,
    cluster: u32,
    external: u32,
}

pub fn xdp() -> Result<Xdp> {
    for leg in [CLUSTER, EXTERNAL] {
        let script = format!(
            "ip link add {leg} type veth peer name {leg}-p && ip link set {leg} up && \
             ip link set {leg}-p up"
        );
        let status = Command::new("sh").args(["-c", &script]).status()?;
        if !status.success() {
            bail!("{script}: {status}");
        }
    }
    let gw = Gateway::load(GatewayOptions {
        cluster_iface: CLUSTER.into(),
        external_iface: EXTERNAL.into(),
        ..Default::default()
    })
    .context("load the gateway")?;
    let index = |name: &str| portcullis_lab::iface::ifindex(name).context("ifindex");
    Ok(Xdp {
        gw,
        cluster: index(CLUSTER)?,
        external: index(EXTERNAL)?,
    })
}

impl DiffDatapath for Xdp {
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
        let program = portcullis_gateway::TestProgram::Gateway;
        match self
            .gw
            .test_run(program, leg, &p.bytes, 1)
            .expect("test run")
            .action
        {
            XDP_DROP => Decision::Drop,
            // The program passes what it does not judge as it passes what it allows.
            XDP_PASS if p.shape == Shape::NotIp => Decision::NotIp,
            XDP_PASS => Decision::Pass,
            other => panic!("unexpected XDP action {other}"),
        }
    }
}

/// The node hook's delivery program (test runs need no interface), every snapshot after the
/// first applied as a delta.
pub struct Node(NodeHook);

pub fn node() -> Result<Node> {
    Ok(Node(
        NodeHook::load(NodeOptions::default()).context("load the node hook")?,
    ))
}

impl NodeDiffDatapath for Node {
    fn apply(&mut self, tables: &NodeTables) {
        self.0.apply(tables).expect("apply");
        self.0.clear_flows().expect("clear flows");
    }

    fn delivers(&mut self, bytes: &[u8]) -> bool {
        let program = portcullis_node::TestProgram::Deliver;
        match self.0.test_run(program, bytes, 1).expect("test run").action {
            TC_ACT_OK => true,
            TC_ACT_SHOT => false,
            other => panic!("unexpected tc action {other}"),
        }
    }
}

const CLUSTER_IFINDEX: u32 = 1;
const EXTERNAL_IFINDEX: u32 = 2;

/// The AF_XDP engine's pipeline, no kernel involved: each snapshot a new generation of policy
/// tables, an empty flow table.
pub struct Engine {
    tables: PolicyTables,
    pipeline: Pipeline<LocalFlows>,
    now_ns: u64,
    pkt: Packet,
}

pub fn engine() -> Engine {
    Engine {
        tables: PolicyTables::new(&GatewayTables::default(), 0),
        pipeline: Pipeline::new(LocalFlows::default()),
        now_ns: 1_000_000_000,
        pkt: new_packet(),
    }
}

impl DiffDatapath for Engine {
    fn apply(&mut self, tables: &GatewayTables) {
        self.tables = PolicyTables::new(tables, self.tables.generation() + 1);
        self.pipeline.flows.clear();
    }

    fn judge(&mut self, p: &DiffPacket) -> Decision {
        self.now_ns += 1_000;
        let (sides, ifindex) = if p.cluster_leg {
            (CHECK_EGRESS_OF_SRC, CLUSTER_IFINDEX)
        } else {
            (CHECK_INGRESS_OF_DST, EXTERNAL_IFINDEX)
        };
        let (tables, now, pkt) = (&self.tables, self.now_ns, &mut self.pkt);
        match (self.pipeline).classify(tables, &p.bytes, sides, ifindex, now, true, pkt) {
            Outcome::Allowed | Outcome::Opened(_) => Decision::Pass,
            Outcome::NotIp => Decision::NotIp,
            Outcome::Dropped(_) => Decision::Drop,
        }
    }
}
