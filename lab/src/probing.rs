//! Probes: resolving them to namespaces and addresses, choosing what each namespace serves, and
//! running them from their source namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use portcullis_policy::model::Protocol;
use portcullis_policy::probe::{Probe, ProbeEndpoint};

use crate::client::{self, Outcome};
use crate::server::ServerSpec;
use crate::topology::{pod_key, PodAttachment, Topology};
use crate::{netns, Lab, LabError, Observation, Verdict};

/// A probe resolved to namespaces and addresses.
pub(crate) struct Resolved {
    src_netns: String,
    src: IpAddr,
    dst: SocketAddr,
}

/// Picks the addresses a probe uses: the first destination address in a family the source has,
/// IPv4 first.
fn pick_pair(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    for want_v4 in [true, false] {
        let s = src.iter().find(|a| a.is_ipv4() == want_v4);
        let d = dst.iter().find(|a| a.is_ipv4() == want_v4);
        if let (Some(s), Some(d)) = (s, d) {
            return Some((*s, *d));
        }
    }
    None
}

impl Topology {
    fn pod_of(&self, namespace: &str, name: &str) -> Result<&PodAttachment, LabError> {
        let key = pod_key(namespace, name);
        self.pods.get(&key).ok_or(LabError::UnknownPod(key))
    }

    fn endpoint_netns(&self, ep: &ProbeEndpoint) -> Result<String, LabError> {
        match ep {
            ProbeEndpoint::External(_) => Ok(self.ext_netns.clone()),
            ProbeEndpoint::Pod { namespace, name } => {
                Ok(self.pod_of(namespace, name)?.netns.clone())
            }
        }
    }

    fn endpoint_addrs(&self, ep: &ProbeEndpoint) -> Result<Vec<IpAddr>, LabError> {
        match ep {
            ProbeEndpoint::External(ip) => Ok(vec![*ip]),
            ProbeEndpoint::Pod { namespace, name } => Ok(self.pod_of(namespace, name)?.ips.clone()),
        }
    }

    fn resolve(&self, probe: &Probe) -> Result<Resolved, LabError> {
        let src_netns = self.endpoint_netns(&probe.from)?;
        let src = self.endpoint_addrs(&probe.from)?;
        let dst = self.endpoint_addrs(&probe.to)?;
        if let ProbeEndpoint::External(ip) = &probe.from {
            if !self.externals.contains(ip) {
                return Err(LabError::NotPrepared(probe.to_string()));
            }
        }
        let (s, d) = pick_pair(&src, &dst).ok_or_else(|| LabError::NoCommonFamily {
            from: probe.from.to_string(),
            to: probe.to.to_string(),
        })?;
        Ok(Resolved {
            src_netns,
            src: s,
            dst: SocketAddr::new(d, probe.port),
        })
    }
}

impl Lab {
    /// What each destination namespace serves for `probes`; marks each served probe prepared.
    pub(crate) fn server_specs(&mut self, probes: &[Probe]) -> BTreeMap<String, ServerSpec> {
        let mut specs: BTreeMap<String, ServerSpec> = BTreeMap::new();
        for probe in probes {
            // A probe that cannot be resolved (unknown pod, no common family) gets its error from
            // `probe`; it does not stop the rest of the lab.
            let resolved = self
                .topo
                .resolve(probe)
                .and_then(|r| Ok((r, self.topo.endpoint_netns(&probe.to)?)));
            let (r, dst_netns) = match resolved {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%probe, "not served: {e}");
                    continue;
                }
            };
            let spec = specs.entry(dst_netns).or_default();
            match probe.protocol {
                Protocol::Tcp => {
                    spec.tcp.insert(r.dst);
                }
                Protocol::Udp => {
                    spec.udp.insert(r.dst);
                }
                Protocol::Sctp => {
                    spec.sctp
                        .entry(r.dst.ip())
                        .or_default()
                        .insert(r.dst.port());
                }
            }
            self.prepared
                .insert((r.dst.ip(), probe.protocol, r.dst.port()));
        }
        specs
    }

    /// Runs one probe from its source namespace.
    pub fn probe(&self, probe: &Probe) -> Result<Observation, LabError> {
        let r = self.prepare(probe)?;
        let fd = self.find_netns(&r.src_netns)?.fd();
        netns::run_in(fd, || self.attempt_here(probe.protocol, &r))
            .map_err(|e| LabError::io("enter source netns", &r.src_netns, e))
    }

    fn prepare(&self, probe: &Probe) -> Result<Resolved, LabError> {
        let r = self.topo.resolve(probe)?;
        if !self
            .prepared
            .contains(&(r.dst.ip(), probe.protocol, r.dst.port()))
        {
            return Err(LabError::NotPrepared(probe.to_string()));
        }
        Ok(r)
    }

    /// Runs in a thread that is already inside the source namespace.
    fn attempt_here(&self, protocol: Protocol, r: &Resolved) -> Observation {
        let started = Instant::now();
        let mut attempts = 0;
        let mut source_seen = None;
        let (verdict, detail) = loop {
            attempts += 1;
            let a = client::attempt(protocol, r.src, r.dst, self.opts.timeout, &self.arrivals);
            source_seen = a.source_seen.or(source_seen);
            match a.outcome {
                Outcome::Final(v, d) => break (v, d),
                Outcome::Timeout(d) if attempts > self.opts.retries => break (Verdict::Deny, d),
                Outcome::Timeout(d) => {
                    tracing::debug!(from = %r.src, to = %r.dst, ?protocol, "attempt {attempts}: {d}; retrying");
                }
            }
        };
        Observation {
            verdict,
            detail,
            from_addr: r.src,
            to: r.dst,
            source_seen,
            attempts,
            elapsed: started.elapsed(),
        }
    }

    /// Runs every probe, up to [`LabOptions::parallelism`](crate::LabOptions::parallelism) at
    /// once; results in input order.
    pub fn probe_all(&self, probes: &[Probe]) -> Vec<Result<Observation, LabError>> {
        let results: Vec<Mutex<Option<Result<Observation, LabError>>>> =
            probes.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = self.opts.parallelism.clamp(1, probes.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= probes.len() {
                        break;
                    }
                    let out = self.prepare(&probes[i]).and_then(|r| {
                        let fd = self.find_netns(&r.src_netns)?.fd();
                        netns::enter(fd)
                            .map_err(|e| LabError::io("enter source netns", &r.src_netns, e))?;
                        Ok(self.attempt_here(probes[i].protocol, &r))
                    });
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("every probe ran")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_prefers_ipv4_then_ipv6() {
        let a4: IpAddr = "10.0.0.1".parse().unwrap();
        let a6: IpAddr = "fd00::1".parse().unwrap();
        let b4: IpAddr = "10.0.0.2".parse().unwrap();
        let b6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(pick_pair(&[a6, a4], &[b6, b4]), Some((a4, b4)));
        assert_eq!(pick_pair(&[a6, a4], &[b6]), Some((a6, b6)));
        assert_eq!(pick_pair(&[a4], &[b6]), None);
    }
}
