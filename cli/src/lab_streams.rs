//! Long-lived TCP connections through the lab, for the fault measurements (`lab failover`,
//! `lab chaos`): an echo server in the external namespace that remembers every source address it
//! saw, and N connections from pods to it, half of them streaming an 8-byte message every few
//! milliseconds, half idle. At the end every connection exchanges one last message: it survived
//! when that came back on the same connection (no reset, no new connection).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_lab::Lab;
use portcullis_policy::model::Snapshot;

use crate::{load_reporting, OutputFormat, SourceArgs};

/// The scenario's cluster from `manifests`; any rejected object fails the measurement.
pub fn load_scenario(manifests: &[PathBuf]) -> Result<Snapshot> {
    let (snapshot, rejected) = load_reporting(&SourceArgs {
        manifests: manifests.to_vec(),
        kubeconfig: None,
        kube: false,
    })?;
    if rejected {
        bail!("the scenario's manifests have errors (above)");
    }
    Ok(snapshot)
}

/// A measurement's outcome: one JSON object, or its fields as `key: value` lines.
pub fn print_outcome(outcome: &serde_json::Value, output: OutputFormat) -> Result<()> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(outcome)?),
        OutputFormat::Table => {
            for (key, value) in outcome.as_object().into_iter().flatten() {
                println!("{key:>20}: {value}");
            }
        }
    }
    Ok(())
}

/// The connections, each driven by a thread of its own.
pub struct Streams {
    records: Vec<Arc<Mutex<Record>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    check: Arc<AtomicBool>,
}

/// What became of the connections.
pub struct StreamsOutcome {
    pub survived: usize,
    /// The longest interval between two echoes of a streaming connection (since `from`).
    pub max_gap: Duration,
    /// The distinct errors that ended connections.
    pub errors: BTreeSet<String>,
}

impl Streams {
    /// Opens `n` connections to `to`, from `pods` (`namespace/name`) in turn; even ones stream a
    /// message every `interval`.
    pub fn open(
        lab: &Lab,
        pods: &[String],
        to: SocketAddr,
        n: usize,
        interval: Duration,
    ) -> Result<Streams> {
        let stop = Arc::new(AtomicBool::new(false));
        let check = Arc::new(AtomicBool::new(false));
        let records: Vec<Arc<Mutex<Record>>> = (0..n).map(|_| Arc::default()).collect();
        let mut threads = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let pod = &pods[i % pods.len()];
            let (namespace, name) = pod.split_once('/').context("pod keys are namespace/name")?;
            let attachment = lab
                .pod(namespace, name)
                .with_context(|| format!("pod {pod} in the lab"))?;
            let stream = lab
                .run_in_netns(&attachment.netns, move || {
                    TcpStream::connect_timeout(&to, Duration::from_secs(2))
                })?
                .with_context(|| format!("connection {i} from {pod} to {to}"))?;
            let streaming = i % 2 == 0;
            let (record, stop, check) = (Arc::clone(record), Arc::clone(&stop), Arc::clone(&check));
            threads.push(std::thread::spawn(move || {
                drive(stream, streaming, interval, &record, &stop, &check);
            }));
        }
        Ok(Streams {
            records,
            threads,
            stop,
            check,
        })
    }

    /// Connections that have failed so far.
    pub fn failed(&self) -> usize {
        (self.records.iter())
            .filter(|r| r.lock().unwrap_or_else(|e| e.into_inner()).error.is_some())
            .count()
    }

    /// Every connection exchanges its last message (up to 2.5 s), then the threads stop. Gaps are
    /// counted between echoes from `from` on.
    pub fn finish(self, from: Instant) -> StreamsOutcome {
        self.check.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2500));
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut outcome = StreamsOutcome {
            survived: 0,
            max_gap: Duration::ZERO,
            errors: BTreeSet::new(),
        };
        for record in &self.records {
            let r = record.lock().unwrap_or_else(|e| e.into_inner());
            outcome.survived += usize::from(r.survived);
            outcome.errors.extend(r.error.clone());
            let echoes: Vec<&Instant> = r.echoes.iter().filter(|t| **t >= from).collect();
            for pair in echoes.windows(2) {
                outcome.max_gap = outcome.max_gap.max(pair[1].duration_since(*pair[0]));
            }
        }
        outcome
    }
}

/// One connection's record.
#[derive(Default)]
struct Record {
    /// When each echo came back (streaming connections).
    echoes: Vec<Instant>,
    /// The message exchanged after the failover came back.
    survived: bool,
    error: Option<String>,
}

/// A connection: streaming ones exchange an 8-byte message every `interval`, idle ones one at
/// the start; once `check` is set every one exchanges a last message (survived if it comes back).
fn drive(
    mut stream: TcpStream,
    streaming: bool,
    interval: Duration,
    record: &Mutex<Record>,
    stop: &AtomicBool,
    check: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut exchange = |n: u64| -> std::io::Result<()> {
        stream.write_all(&n.to_be_bytes())?;
        let mut back = [0u8; 8];
        stream.read_exact(&mut back)?;
        if back != n.to_be_bytes() {
            return Err(std::io::Error::other("echo does not match"));
        }
        Ok(())
    };
    let fail = |e: std::io::Error| record.lock().unwrap().error = Some(e.kind().to_string());
    let mut n = 0u64;
    if let Err(e) = exchange(n) {
        return fail(e);
    }
    while !check.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        if streaming {
            n += 1;
            // A lost segment is retransmitted by TCP; a read timeout here is a gap, not a loss.
            match exchange(n) {
                Ok(()) => record.lock().unwrap().echoes.push(Instant::now()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return fail(e),
            }
        }
        std::thread::sleep(interval);
    }
    n += 1;
    match exchange(n) {
        Ok(()) => record.lock().unwrap().survived = true,
        Err(e) => fail(e),
    }
}

/// The external server: echoes 8-byte messages, remembers every source address it saw.
pub struct Server {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<IpAddr>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// An echo server on `at` in the external namespace (the address is added to its segment
    /// device if it is not there).
    pub fn start(lab: &Lab, at: SocketAddr) -> Result<Server> {
        let ext = lab.external_netns().to_string();
        let dev = lab.external_device();
        // The lab holds the external hosts its probes name; another one is added here.
        if !lab.external_addresses().any(|ip| *ip == at.ip()) {
            let mut add = Command::new("ip");
            match at.ip() {
                IpAddr::V4(ip) => add.args(["addr", "add", &format!("{ip}/32"), "dev", dev]),
                IpAddr::V6(ip) => {
                    add.args(["addr", "add", &format!("{ip}/128"), "dev", dev, "nodad"])
                }
            };
            let out = lab.output_in(&ext, add)?;
            if !out.status.success() {
                bail!(
                    "adding {} to the external namespace: {}",
                    at.ip(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let listener = lab
            .run_in_netns(&ext, move || TcpListener::bind(at))?
            .with_context(|| format!("listening on {at}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, from)) => {
                            seen.lock().unwrap().insert(from.ip());
                            let stop = Arc::clone(&stop);
                            std::thread::spawn(move || echo(conn, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Server { stop, seen, thread })
    }

    /// Stops it; returns every source address it saw.
    pub fn stop(self) -> BTreeSet<IpAddr> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 8];
    while !stop.load(Ordering::Relaxed) {
        match conn.read_exact(&mut buf) {
            Ok(()) => {
                if conn.write_all(&buf).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
