//! Nodes and EgressGateways from a real kube-apiserver 1.20: a cluster without the CRD is a
//! cluster without EgressGateways, the shipped CRD installs, objects arrive in the snapshot, and
//! one that the CRD schema admits but our validation refuses is rejected by name while its last
//! good version stays.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use portcullis_policy::load::Loaded;
use portcullis_policy::model::EGRESS_GATEWAY_LABEL;
use portcullis_watcher::{KubeOptions, KubeSource};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

fn egress_gateways(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("portcullis.io", "v1alpha1", "EgressGateway");
    Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(&gvk, "egressgateways"),
    )
}

fn prod_egress(egress_ips: &[&str]) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.io/v1alpha1",
        "kind": "EgressGateway",
        "metadata": {"name": "prod-egress"},
        "spec": {
            "selectors": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {}}],
            "destinationCIDRs": ["0.0.0.0/0", "::/0"],
            "gateway": {
                "nodeSelector": {"matchLabels": {EGRESS_GATEWAY_LABEL: "true"}},
                "egressIPs": egress_ips,
            },
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_egress_gateways_with_the_crd_and_without() {
    init_tracing();
    let cluster = Cluster::start(false);
    let admin = cluster.admin().await;
    let pp = PostParams::default();
    let options = KubeOptions {
        coalesce: Duration::from_millis(50),
        absent_retry: Duration::from_millis(500),
        ..KubeOptions::default()
    };
    let source = KubeSource::connect(Some(&cluster.kubeconfig), options)
        .await
        .unwrap();
    let mut rx = source.subscribe();
    let ready = wait_for(&mut rx, LIMIT, "ready without the CRD", |s| s.source_ready).await;
    assert!(ready.snapshot.egress_gateways.is_empty() && !ready.stale);

    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/crds/egressgateway.yaml"),
    )
    .unwrap();
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).unwrap();
    Api::<CustomResourceDefinition>::all(admin.clone())
        .create(&pp, &crd)
        .await
        .unwrap();

    let nodes: Api<core::Node> = Api::all(admin.clone());
    let node = core::Node {
        metadata: meta(None, "gw-1", &[(EGRESS_GATEWAY_LABEL, "true")]),
        ..Default::default()
    };
    nodes.create(&pp, &node).await.unwrap();
    let addresses = json!({"status": {"addresses": [
        {"type": "Hostname", "address": "gw-1"},
        {"type": "ExternalIP", "address": "198.51.100.1"},
        {"type": "InternalIP", "address": "172.18.0.2"},
    ]}});
    nodes
        .patch_status("gw-1", &PatchParams::default(), &Patch::Merge(&addresses))
        .await
        .unwrap();

    // The CRD takes a moment to be established: until then creating one is refused.
    let api = egress_gateways(admin.clone());
    let deadline = Instant::now() + LIMIT;
    while let Err(e) = api
        .create(&pp, &prod_egress(&["192.0.2.100", "2001:db8::100"]))
        .await
    {
        assert!(Instant::now() < deadline, "creating the EgressGateway: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let good = wait_for(&mut rx, LIMIT, "the EgressGateway and the node", |s| {
        !s.snapshot.egress_gateways.is_empty()
            && s.snapshot.nodes.iter().any(|n| n.addresses.len() == 2)
    })
    .await;
    let gateway = &good.snapshot.egress_gateways[0];
    assert_eq!(gateway.name, "prod-egress");
    assert_eq!(gateway.egress_ips.len(), 2);
    assert_eq!(gateway.destination_cidrs.len(), 2);
    let node = &good.snapshot.nodes[0];
    assert_eq!(node.labels.get(EGRESS_GATEWAY_LABEL).unwrap(), "true");
    let shown: Vec<String> = node.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(shown, ["172.18.0.2", "198.51.100.1"], "InternalIP first");
    assert!(good.errors.is_empty(), "{:?}", good.errors);

    // What the schema rejects never reaches us: a third egress IP (maxItems: 2), a name that is
    // no address, a CIDR that is none (formats), a missing gateway (required).
    for refused in [
        json!({"spec": {"gateway": {"egressIPs": ["192.0.2.1", "192.0.2.2", "192.0.2.3"]}}}),
        json!({"spec": {"gateway": {"egressIPs": ["gateway.example"]}}}),
        json!({"spec": {"destinationCIDRs": ["10.0.0.0/33"]}}),
        json!({"spec": {"gateway": null}}),
    ] {
        let answer = api
            .patch(
                "prod-egress",
                &PatchParams::default(),
                &Patch::Merge(&refused),
            )
            .await;
        assert!(
            matches!(&answer, Err(kube::Error::Api(s)) if s.code == 422),
            "{refused}: {answer:?}"
        );
    }

    // Two IPv4 egress IPs fit the schema of this API server (its CEL rules need 1.25+); our
    // validation rejects the object by name and field, and the last good version stays.
    let two_v4 = json!({"spec": {"gateway": {"egressIPs": ["192.0.2.1", "192.0.2.2"]}}});
    api.patch(
        "prod-egress",
        &PatchParams::default(),
        &Patch::Merge(&two_v4),
    )
    .await
    .unwrap();
    let bad = wait_for(&mut rx, LIMIT, "the rejection", |s| !s.errors.is_empty()).await;
    assert_eq!(
        bad.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["kubernetes EgressGateway doc 1 (EgressGateway prod-egress): spec.gateway.egressIPs[1]: \
          192.0.2.2: at most one egress IP per address family"]
    );
    let loaded = Loaded {
        snapshot: (*bad.snapshot).clone(),
        errors: bad.errors.clone(),
    };
    let applied = loaded.with_last_good(&good.snapshot).unwrap();
    assert_eq!(applied.egress_gateways, good.snapshot.egress_gateways);
    assert_eq!(applied.nodes, good.snapshot.nodes);

    // Fixed: accepted again.
    let fixed = json!({"spec": {"gateway": {"egressIPs": ["192.0.2.7"]}}});
    api.patch(
        "prod-egress",
        &PatchParams::default(),
        &Patch::Merge(&fixed),
    )
    .await
    .unwrap();
    let s = wait_for(&mut rx, LIMIT, "the fixed version", |s| {
        s.errors.is_empty() && s.snapshot.egress_gateways.len() == 1
    })
    .await;
    assert_eq!(
        s.snapshot.egress_gateways[0].egress_ips,
        ["192.0.2.7".parse::<std::net::IpAddr>().unwrap()]
    );
}
