//! Loading the netfilter contenders' rules (`rules`) into the gateway namespace with the
//! tools people use: `nft -f`, `ipset restore` and `iptables-restore`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::contender::Contender;
use crate::harness::Harness;
use crate::lab::{sh, Lab};
use crate::report::Report;
use crate::rules::{self, IptRules};
use crate::workload::Workload;

/// Prefix of the iptables contenders' ipset names.
const SET_TAG: &str = "pcp";

impl Harness<'_> {
    /// Loads netfilter contender `c`'s rules, pushing its rule count (and ipset's memory).
    pub fn load_netfilter(&self, c: Contender, w: &Workload, report: &mut Report) -> Result<()> {
        let ns = &self.lab.gw_ns;
        let iface = self.lab.cluster_dev.as_str();
        let s = c.subject(w);
        match c {
            Contender::Nftables | Contender::NftablesCt => {
                let stateful = c == Contender::NftablesCt;
                let nft = rules::nftables(&w.tables, &w.flat, iface, stateful);
                let path = write_tmp("nft", &nft.script)?;
                sh(&format!("ip netns exec {ns} nft -f {}", path.display()))?;
                report.push(s.figure("rule_elements", nft.elements as f64, "intervals"));
            }
            Contender::IptablesIpset => {
                let ipt = rules::ipset(&w.tables, &w.flat, iface, SET_TAG);
                restore(ns, &ipt)?;
                report.push(s.figure("rule_elements", ipt.count as f64, "set entries"));
                let mem: f64 = sh(&format!("ip netns exec {ns} ipset list -t"))?
                    .lines()
                    .filter_map(|l| l.strip_prefix("Size in memory: "))
                    .filter_map(|v| v.trim().parse::<f64>().ok())
                    .sum();
                report.push(s.figure("kernel_memory", mem, "bytes"));
            }
            Contender::IptablesLinear => {
                let ipt = rules::linear(&w.tables, &w.flat, iface, SET_TAG);
                restore(ns, &ipt)?;
                report.push(s.figure("rule_elements", ipt.count as f64, "rules"));
            }
            _ => bail!("{} has no netfilter rules", c.name()),
        }
        Ok(())
    }
}

/// `ipset restore` then `iptables-restore` in `ns`.
fn restore(ns: &str, ipt: &IptRules) -> Result<()> {
    let sets = write_tmp("ipset", &ipt.ipset)?;
    let rules = write_tmp("ipt", &ipt.iptables)?;
    sh(&format!(
        "ip netns exec {ns} ipset restore -f {} && ip netns exec {ns} iptables-restore {}",
        sets.display(),
        rules.display()
    ))?;
    Ok(())
}

/// A script in the temporary directory, named after this run (overwritten by the next of its
/// kind).
fn write_tmp(kind: &str, content: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}-{kind}.txt", Lab::prefix()));
    std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
