//! Chained CNI plugin `portcullis-cni`: the pod's first packet is already under its policy.
//!
//! The container runtime runs the plugins of the network's conflist in order when it sets up a pod
//! sandbox, and starts the pod's containers only after the last one returned. Chained after the
//! interface plugin (bridge, ptp, ...), `portcullis-cni` asks the node daemon (over a unix socket)
//! to attach its programs to the pod's host-side veth and returns only once they are attached.
//! The programs fail closed: until the pod's identity and policy are in force (the daemon has seen
//! the pod and its address in the API), every packet to or from its address is dropped. A denied
//! first connection therefore never gets through; an allowed one is delayed until the pod is in
//! force (its SYN is retransmitted). If the daemon is not running, ADD fails and the runtime
//! retries the sandbox: pods do not start unenforced.
//!
//! The same binary is the plugin when it runs as `portcullis-cni` (the name
//! [`install`] gives it in the CNI bin directory).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

/// Name of the plugin binary and of its `type` in the conflist.
pub const PLUGIN_NAME: &str = "portcullis-cni";
/// Where the plugin finds the node daemon when its configuration does not say (the default state
/// directory's socket).
pub const DEFAULT_SOCKET: &str = "/run/portcullis/node/cni.sock";
/// How long the plugin waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(20);
const CNI_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What the plugin asks the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub command: CniCommand,
    pub container_id: String,
    /// `namespace/name` from `CNI_ARGS` (informational: the daemon enforces by address).
    pub pod: Option<String>,
    /// Host-side interfaces of the previous plugins' result (no `sandbox`).
    pub interfaces: Vec<String>,
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The interface now enforced (ADD, CHECK).
    pub interface: Option<String>,
    pub error: Option<String>,
}

/// A request received by the daemon with the way back to the plugin.
pub struct Pending {
    pub request: Request,
    pub reply: mpsc::Sender<Reply>,
}

/// Listens on `socket`; each request is handed to the daemon's loop through `tx` (waking it with
/// `wake`) and its reply written back to the plugin.
pub fn serve(
    socket: &Path,
    tx: mpsc::Sender<Pending>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    info!(socket = %socket.display(), "listening for the CNI plugin");
    std::thread::Builder::new()
        .name("cni-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let wake = Arc::clone(&wake);
                std::thread::spawn(move || {
                    if let Err(e) = answer(stream, &tx, &wake) {
                        warn!(error = format!("{e:#}"), "CNI request failed");
                    }
                });
            }
        })
        .context("starting the CNI listener")?;
    Ok(())
}

fn answer(
    stream: UnixStream,
    tx: &mpsc::Sender<Pending>,
    wake: &tokio::sync::Notify,
) -> Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let request: Request = serde_json::from_str(&line).context("parsing a CNI request")?;
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send(Pending {
        request,
        reply: reply_tx,
    })
    .context("the daemon loop has stopped")?;
    wake.notify_one();
    let reply = reply_rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| Reply {
        interface: None,
        error: Some("the node daemon did not answer in time".into()),
    });
    let mut stream = stream;
    writeln!(stream, "{}", serde_json::to_string(&reply)?)?;
    Ok(())
}

/// Copies this executable into `bin_dir` as [`PLUGIN_NAME`] and chains the plugin at the end of
/// the network configuration the runtime uses (the first `.conflist` of `conf_dir` in name
/// order). Returns the conflist changed, or `None` when there is none yet (the interface plugin
/// may install it later: call again).
pub fn install(bin_dir: &Path, conf_dir: &Path, socket: &Path) -> Result<Option<PathBuf>> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let target = bin_dir.join(PLUGIN_NAME);
    let tmp = bin_dir.join(format!(".{PLUGIN_NAME}.tmp"));
    std::fs::copy(&exe, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("installing {}", target.display()))?;

    let mut confs: Vec<PathBuf> = match std::fs::read_dir(conf_dir) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect(),
        Err(_) => return Ok(None),
    };
    confs.sort();
    let Some(first) = confs.first() else {
        return Ok(None);
    };
    if first.extension().and_then(|e| e.to_str()) != Some("conflist") {
        bail!(
            "{}: the network configuration the runtime uses is a single-plugin .conf; \
             Portcullis chains into a .conflist (convert it to one)",
            first.display()
        );
    }
    let text =
        std::fs::read_to_string(first).with_context(|| format!("reading {}", first.display()))?;
    let conf = chain_into(&text, socket).with_context(|| format!("{}", first.display()))?;
    if let Some(conf) = conf {
        let tmp = first.with_extension("conflist.portcullis-tmp");
        std::fs::write(&tmp, conf).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, first).with_context(|| format!("replacing {}", first.display()))?;
        info!(conflist = %first.display(), "chained the portcullis-cni plugin");
    }
    Ok(Some(first.clone()))
}

/// The conflist `text` with the plugin appended (or its socket updated); `None` when it is
/// already there as wanted.
fn chain_into(text: &str, socket: &Path) -> Result<Option<String>> {
    let mut conf: Value = serde_json::from_str(text).context("not JSON")?;
    let plugins = conf
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .context("no plugins list")?;
    let wanted = json!({"type": PLUGIN_NAME, "socket": socket});
    if let Some(existing) = plugins
        .iter_mut()
        .find(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME))
    {
        if *existing == wanted {
            return Ok(None);
        }
        *existing = wanted;
    } else {
        plugins.push(wanted);
    }
    Ok(Some(serde_json::to_string_pretty(&conf)?))
}

/// The plugin's side, run by the container runtime (`CNI_COMMAND` etc. in the environment, the
/// network configuration on standard input). Prints the result or a CNI error on stdout.
pub fn plugin_main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let conf: Value = serde_json::from_str(&input).unwrap_or(Value::Null);
    let cni_version = conf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0")
        .to_owned();
    match plugin(&command, &conf) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // CNI error codes above 99 are the plugin's own; 999 is "generic".
            println!(
                "{}",
                json!({"cniVersion": cni_version, "code": 999, "msg": format!("portcullis: {e:#}")})
            );
            ExitCode::FAILURE
        }
    }
}

fn plugin(command: &str, conf: &Value) -> Result<Option<String>> {
    match command {
        "VERSION" => {
            return Ok(Some(
                json!({"cniVersion": "1.0.0", "supportedVersions": CNI_VERSIONS}).to_string(),
            ))
        }
        "ADD" | "DEL" | "CHECK" | "GC" | "STATUS" => {}
        other => bail!("unknown CNI_COMMAND {other:?}"),
    }
    let socket = conf
        .get("socket")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_SOCKET);
    let prev = conf.get("prevResult");
    let interfaces: Vec<String> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|i| {
                    i.get("sandbox")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                })
                .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let ips: Vec<IpAddr> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|i| i.get("address").and_then(Value::as_str))
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let arg = |key: &str| {
        args.split(';')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let pod = arg("K8S_POD_NAMESPACE")
        .zip(arg("K8S_POD_NAME"))
        .map(|(ns, name)| format!("{ns}/{name}"));
    let request = Request {
        command: match command {
            "ADD" => CniCommand::Add,
            "CHECK" => CniCommand::Check,
            "DEL" => CniCommand::Del,
            // Nothing of ours to collect or report: the daemon's status says the rest.
            _ => return Ok(None),
        },
        container_id: std::env::var("CNI_CONTAINERID").unwrap_or_default(),
        pod,
        interfaces,
        ips,
    };
    match request.command {
        CniCommand::Add => {
            let prev = prev.context(
                "no prevResult: portcullis-cni is chained after the plugin that creates the \
                 pod's interface",
            )?;
            let reply = ask(Path::new(socket), &request)?;
            if let Some(e) = reply.error {
                bail!("{e}");
            }
            Ok(Some(prev.to_string()))
        }
        CniCommand::Check => {
            let reply = ask(Path::new(socket), &request)?;
            match reply.error {
                Some(e) => bail!("{e}"),
                None => Ok(None),
            }
        }
        // Deleting must never fail on our account (the daemon may be gone with the node).
        CniCommand::Del => {
            let _ = ask(Path::new(socket), &request);
            Ok(None)
        }
    }
}

fn ask(socket: &Path, request: &Request) -> Result<Reply> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the node daemon at {} (is portcullis node running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    writeln!(stream, "{}", serde_json::to_string(request)?)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the node daemon's reply")?;
    serde_json::from_str(&line).context("parsing the node daemon's reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaining_appends_once_and_updates_the_socket() {
        let base = r#"{"cniVersion":"0.4.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;
        let sock = Path::new("/run/x.sock");
        let once = chain_into(base, sock).unwrap().unwrap();
        let v: Value = serde_json::from_str(&once).unwrap();
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2]["type"], PLUGIN_NAME);
        assert_eq!(chain_into(&once, sock).unwrap(), None);
        let moved = chain_into(&once, Path::new("/run/y.sock"))
            .unwrap()
            .unwrap();
        assert!(moved.contains("/run/y.sock") && !moved.contains("/run/x.sock"));
        assert!(chain_into("{\"plugins\": 3}", sock).is_err());
    }
}
