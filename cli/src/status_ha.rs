//! The failover lines of `status` (`--ha`): the groups and the gateway each is active on, every
//! member's health as this daemon hears it, the sync lag per peer and the agent's counters.

use serde_json::Value;

/// `ha`, as a gateway or node daemon published it (nothing when it runs without `--ha`).
pub fn print(ha: &Value) {
    if ha.is_null() {
        return;
    }
    let c = &ha["counters"];
    println!(
        "  failover: heartbeat {} ms, detection {} ms   ready {}   active for: {}",
        ha["interval_ms"],
        ha["detection_ms"],
        ha["ready"],
        names(&ha["claims"]).unwrap_or_else(|| "nothing".into())
    );
    for g in ha["groups"].as_array().into_iter().flatten() {
        println!(
            "    EgressGateway {}: members {}   active {}{}",
            g["egress_gateway"].as_str().unwrap_or("?"),
            names(&g["members"]).unwrap_or_default(),
            g["active"].as_str().unwrap_or("none"),
            match g["standby"].as_bool() {
                Some(true) => "",
                _ => "   (no standby: no failover)",
            }
        );
    }
    for m in ha["members"].as_array().into_iter().flatten() {
        println!(
            "    member {}: {}{}   heard {}   claims {}",
            m["member"].as_str().unwrap_or("?"),
            if m["up"].as_bool() == Some(true) {
                "up"
            } else {
                "DOWN"
            },
            if m["ready"].as_bool() == Some(true) {
                ", ready"
            } else {
                ""
            },
            m["heard"],
            names(&m["claims"]).unwrap_or_else(|| "-".into())
        );
    }
    if let Some(lags) = ha["sync_lag_ms"].as_object() {
        for (peer, lag) in lags {
            println!("    sync to {peer}: last lag {lag} ms");
        }
    }
    println!(
        "    heartbeats sent {} received {}   replicas sent {} received {}   failovers {}   split brains resolved {}   sync overflows {}   refused {}",
        c["heartbeats_sent"],
        c["heartbeats_received"],
        c["replicas_sent"],
        c["replicas_received"],
        c["failovers"],
        c["split_brains_resolved"],
        c["sync_overflows"],
        c["refused"]
    );
}

/// `a, b` for a JSON array of strings; `None` when empty or absent.
fn names(v: &Value) -> Option<String> {
    let names: Vec<&str> = v.as_array()?.iter().filter_map(Value::as_str).collect();
    (!names.is_empty()).then(|| names.join(", "))
}
