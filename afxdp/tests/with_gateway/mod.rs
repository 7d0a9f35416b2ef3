//! What the tests of the gateway with its AF_XDP engine share: the gateway on legs `gc` and `ge`
//! (XDP forwarding, pinned maps) and its engine started on every queue.

use portcullis_afxdp::engine::{Engine, EngineOptions};
use portcullis_afxdp::rings::RingConfig;
use portcullis_afxdp::tables::PolicyTables;
use portcullis_gateway::{DatapathMode, ForwardMode, Gateway, GatewayOptions};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::PinDir;

/// Loads the gateway in the calling thread's namespace in `datapath` mode, pinned in `pins`, and
/// applies `tables`; returns it and the generation in force.
pub fn load(datapath: DatapathMode, pins: &PinDir, tables: &GatewayTables) -> (Gateway, u32) {
    let mut gw = Gateway::load(GatewayOptions {
        cluster_iface: "gc".into(),
        external_iface: "ge".into(),
        forward: ForwardMode::Xdp,
        datapath,
        pin_dir: Some(pins.0.clone()),
        ..Default::default()
    })
    .expect("load");
    let generation = gw.apply(tables).expect("apply").generation;
    (gw, generation)
}

/// Starts the engine of `gw` (loaded by [`load`]) on every queue, judging by `tables` of
/// `generation`.
pub fn start_engine(
    gw: &mut Gateway,
    datapath: DatapathMode,
    pins: &PinDir,
    revalidate: bool,
    tables: &GatewayTables,
    generation: u32,
) -> Engine {
    let handles = gw.engine_handles().expect("engine handles");
    Engine::start(
        EngineOptions {
            cluster_iface: "gc".into(),
            external_iface: "ge".into(),
            legs: handles.legs,
            queues: None,
            rings: RingConfig::default(),
            hybrid_pins: (datapath == DatapathMode::Hybrid).then(|| pins.0.clone()),
            mirror_pins: Some(pins.0.clone()),
            revalidate,
            pin_threads: false,
        },
        handles.xsks,
        handles.epoch,
        PolicyTables::new(tables, u64::from(generation)),
    )
    .expect("engine")
}
