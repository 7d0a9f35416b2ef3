//! The egress lines of `status`: on the gateway the EgressGateways it serves and its translations
//! (pool use per egress IP, SNAT counters); on a node its steering (cluster CIDRs, the gateways it
//! steers to and the rules per gateway).

use portcullis_gateway::SnatStatus;
use serde_json::Value;

/// The gateway: what the daemon published (`egress`) and the pinned SNAT status.
pub fn print_gateway(published: Option<&Value>, snat: &SnatStatus) {
    if let Some(egress) = published {
        let node = egress["node"].as_str().unwrap_or("(every EgressGateway)");
        let served = egress["egress_gateways"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        println!(
            "  egress gateway node: {node}   EgressGateways served: {}",
            served.len()
        );
        for g in &served {
            let ips: Vec<&str> = (g["egress_ips"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            println!(
                "    {}: egress IPs {}   pods selected {}",
                g["name"].as_str().unwrap_or("?"),
                ips.join(", "),
                g["pods"].as_u64().unwrap_or(0)
            );
        }
        crate::status_ha::print(&egress["ha"]);
    }
    let c = &snat.counters;
    println!(
        "  SNAT: {}   pods {}   destination entries {}   translations in use {}",
        if snat.enabled { "on" } else { "off" },
        snat.pods,
        snat.entries,
        snat.translations
    );
    for ip in &snat.egress_ips {
        println!(
            "    {}: {} translations, ports in use {} of {}",
            ip.ip, ip.translations, ip.ports_in_use, ip.pool_size
        );
    }
    println!(
        "    translated: new {} packets out {} in {} icmp errors {}   dropped: pool exhausted {} no mapping {} table full {}   answered: arp {} nd {}",
        c.new_translations,
        c.translated_outbound,
        c.translated_inbound,
        c.icmp_errors,
        c.pool_exhausted,
        c.no_mapping,
        c.table_full,
        c.arp_replies,
        c.nd_replies
    );
}

/// A node: its steering as the daemon published it (nothing without `--cluster-cidr`).
pub fn print_node(published: Option<&Value>) {
    let Some(steering) = published else {
        println!("  egress steering: off (no --cluster-cidr)");
        return;
    };
    let cidrs: Vec<&str> = (steering["cluster_cidrs"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    println!(
        "  egress steering: {} routes   cluster CIDRs (never steered): {}",
        steering["routes"].as_u64().unwrap_or(0),
        cidrs.join(", ")
    );
    let installed = &steering["installed"];
    for g in installed["gateways"].as_array().into_iter().flatten() {
        println!(
            "    gateway {}: table {}, {} rules{}",
            g["via"].as_str().unwrap_or("?"),
            g["table"],
            g["rules"],
            if g["fail_closed"].as_bool() == Some(false) {
                "   WARNING: no fail-closed route"
            } else {
                ""
            }
        );
    }
    if let Some(e) = steering["error"].as_str() {
        println!("    ERROR: steering not in force: {e}");
    }
    crate::status_ha::print(&steering["ha"]);
}
