//! The harness's own topology: three network namespaces (generator, gateway with two legs, sink)
//! joined by veth pairs, created with unique names and deleted on drop — also on a panic, an
//! error or Ctrl-C (the signal handler only sets a flag; the run stops and unwinds through this
//! guard). `perf/run` adds a shell trap that deletes leftovers of this process as a second guard.

use std::process::Command;

use anyhow::{bail, Context, Result};
use portcullis_lab::{command, format_mac, iface, netns};

/// Runs a shell command; fails with its output.
pub fn sh(cmd: &str) -> Result<String> {
    Ok(command::sh(cmd)?)
}

/// Runs `f` on a thread that entered network namespace `ns` (not `ip netns exec`, which remounts
/// /sys and hides bpffs). Commands spawned from `f` run in the namespace too.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    netns::run_in_named(ns, f).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"))
}

pub fn ifindex(name: &str) -> Result<u32> {
    Ok(iface::ifindex(name)?)
}

pub fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let s = sh(&format!("ip -n {ns} -j link show dev {dev}"))?;
    let v: serde_json::Value = serde_json::from_str(&s)?;
    let addr = v[0]["address"].as_str().context("no MAC")?;
    let mut mac = [0u8; 6];
    for (i, part) in addr.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// gen (`g`) → gateway cluster leg (`c`) | gateway external leg (`e`) → sink (`s`).
pub struct Lab {
    pub gen_ns: String,
    pub gw_ns: String,
    pub sink_ns: String,
    pub gen_dev: String,
    pub cluster_dev: String,
    pub external_dev: String,
    pub sink_dev: String,
    pub gen_mac: [u8; 6],
    pub cluster_mac: [u8; 6],
    pub external_mac: [u8; 6],
    pub sink_mac: [u8; 6],
    pub cpus: Cpus,
}

/// Which CPU runs what while measuring. The gateway's cluster-leg NAPI thread always has a core
/// of its own; the generator (and the harness's senders and policy changes) and the sink's NAPI
/// thread share one on a 2-core machine, which limits the rule-less contenders (see README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    pub generator: usize,
    pub gateway: usize,
    pub sink: usize,
}

impl Cpus {
    /// Generator 0, gateway 1, and the sink on CPU 2 where there is one (else with the
    /// generator).
    pub fn for_machine(cpus: usize) -> Cpus {
        Cpus {
            generator: 0,
            gateway: 1,
            sink: if cpus >= 3 { 2 } else { 0 },
        }
    }

    /// `GENERATOR,GATEWAY,SINK`, each below `cpus`; the gateway's must differ from the others.
    pub fn parse(s: &str, cpus: usize) -> Result<Cpus> {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("--cpus {s}: expected three CPU numbers GENERATOR,GATEWAY,SINK")
            })?;
        let [generator, gateway, sink] = v[..] else {
            bail!("--cpus {s}: expected three CPU numbers GENERATOR,GATEWAY,SINK");
        };
        if let Some(c) = v.iter().find(|&&c| c >= cpus) {
            bail!("--cpus {s}: CPU {c} does not exist (this machine has {cpus})");
        }
        if gateway == generator || gateway == sink {
            bail!("--cpus {s}: the gateway needs a CPU of its own");
        }
        Ok(Cpus {
            generator,
            gateway,
            sink,
        })
    }
}

/// The sink's address on the gateway's external link (a documentation range; the routes point
/// every external destination at it and the neighbour entry is static, so nothing leaves).
pub const SINK_IP: &str = "198.51.100.2";

impl Lab {
    pub fn prefix() -> String {
        format!("pcperf-{}", std::process::id())
    }

    pub fn new(cpus: Cpus) -> Result<Lab> {
        let p = Self::prefix();
        let id = std::process::id() % 100_000;
        let mut lab = Lab {
            gen_ns: format!("{p}-gen"),
            gw_ns: format!("{p}-gw"),
            sink_ns: format!("{p}-sink"),
            gen_dev: format!("pg{id}"),
            cluster_dev: format!("pc{id}"),
            external_dev: format!("pe{id}"),
            sink_dev: format!("ps{id}"),
            gen_mac: [0; 6],
            cluster_mac: [0; 6],
            external_mac: [0; 6],
            sink_mac: [0; 6],
            cpus,
        };
        // From here on, Drop deletes whatever was created.
        for ns in [&lab.gen_ns, &lab.gw_ns, &lab.sink_ns] {
            sh(&format!("ip netns add {ns}"))?;
        }
        let (g, c, e, s) = (
            &lab.gen_dev,
            &lab.cluster_dev,
            &lab.external_dev,
            &lab.sink_dev,
        );
        let (gn, wn, sn) = (&lab.gen_ns, &lab.gw_ns, &lab.sink_ns);
        sh(&format!(
            "set -e
            ip link add {g} netns {gn} type veth peer name {c} netns {wn}
            ip link add {e} netns {wn} type veth peer name {s} netns {sn}
            for ns in {gn} {wn} {sn}; do
              ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
              ip -n $ns link set lo up
            done
            ip netns exec {wn} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
                net.ipv4.conf.default.rp_filter=0
            ip netns exec {wn} sysctl -qw net.ipv4.conf.{c}.rp_filter=0 net.ipv4.conf.{e}.rp_filter=0
            ip -n {gn} link set {g} up
            ip -n {wn} addr add 192.0.2.1/24 dev {c}
            ip -n {wn} addr add 198.51.100.1/24 dev {e}
            ip -n {wn} link set {c} up
            ip -n {wn} link set {e} up
            ip -n {sn} addr add {SINK_IP}/24 dev {s}
            ip -n {sn} link set {s} up
            ip -n {wn} route add 10.244.0.0/16 dev {c}
            ip -n {wn} route add default via {SINK_IP} dev {e}"
        ))?;
        lab.gen_mac = mac_of(gn, g)?;
        lab.cluster_mac = mac_of(wn, c)?;
        lab.external_mac = mac_of(wn, e)?;
        lab.sink_mac = mac_of(sn, s)?;
        sh(&format!(
            "ip -n {wn} neigh replace {SINK_IP} lladdr {} dev {e} nud permanent",
            format_mac(&lab.sink_mac)
        ))?;
        Ok(lab)
    }

    /// Switches `dev` in `ns` to threaded NAPI and pins its NAPI kthread to `cpu`; returns the
    /// thread's pid (its CPU time is the gateway's CPU for the run). The NAPI instance of a veth
    /// exists only while an XDP program is attached, so call this after every attach.
    pub fn thread_napi(&self, ns: &str, dev: &str, cpu: usize) -> Result<Option<i32>> {
        sh(&format!(
            "ip netns exec {ns} sh -c 'echo 1 > /sys/class/net/{dev}/threaded'"
        ))?;
        let prefix = format!("napi/{dev}-");
        for _ in 0..50 {
            for entry in std::fs::read_dir("/proc")?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                    continue;
                };
                if comm.trim_end().starts_with(&prefix) {
                    // Real-time priority: the machine is shared (compilers run beside us), and
                    // a NAPI thread at normal priority would get a fair share instead of the
                    // softirq-like priority NAPI normally has. Bounded: only while we measure,
                    // and the kernel's RT throttling keeps 5% for everyone else.
                    let _ = sh(&format!(
                        "taskset -pc {cpu} {pid} >/dev/null && chrt -f -p 50 {pid}"
                    ));
                    return Ok(Some(pid));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(None)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.gen_ns, &self.gw_ns, &self.sink_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// CPU time (ns) a thread has run, from /proc/<pid>/schedstat.
pub fn thread_cpu_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Pins the calling thread to `cpu` and raises its priority (nice -10) over the compilers that
/// may share the machine.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t; gettid has no preconditions.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, -10);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::Cpus;

    #[test]
    fn cpu_layout_defaults_and_parsing() {
        assert_eq!(Cpus::for_machine(2).sink, 0);
        assert_eq!(Cpus::for_machine(4).sink, 2);
        let c = Cpus::parse("3, 1,2", 4).unwrap();
        assert_eq!((c.generator, c.gateway, c.sink), (3, 1, 2));
        // The generator and the sink may share; the gateway may not.
        assert!(Cpus::parse("0,1,0", 2).is_ok());
        for (bad, why) in [
            ("0,1", "three CPU numbers"),
            ("0,1,2,3", "three CPU numbers"),
            ("0,x,2", "three CPU numbers"),
            ("0,1,2", "CPU 2 does not exist"),
            ("1,1,0", "a CPU of its own"),
            ("0,1,1", "a CPU of its own"),
        ] {
            let e = Cpus::parse(bad, 2).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
