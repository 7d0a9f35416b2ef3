//! `ip -batch`: every line of a namespace's configuration through one `ip` process, several
//! namespaces at once.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use crate::LabError;

/// The `ip -batch` lines of one step in one namespace.
pub(super) struct Batch {
    pub netns: String,
    pub step: &'static str,
    pub lines: Vec<String>,
}

impl Batch {
    pub fn new(netns: &str, step: &'static str, lines: Vec<String>) -> Batch {
        Batch {
            netns: netns.to_string(),
            step,
            lines,
        }
    }
}

/// Runs `ip -n NETNS -batch -` with the batch's lines on its standard input.
pub(super) fn run(batch: &Batch) -> Result<(), LabError> {
    wait(batch, spawn(batch)?)
}

/// Runs every batch at once; the first error, if any, once all have finished.
pub(super) fn run_all(batches: &[Batch]) -> Result<(), LabError> {
    let mut running = Vec::new();
    for b in batches {
        running.push(spawn(b)?);
    }
    let mut first_err = None;
    for (b, child) in batches.iter().zip(running) {
        if let Err(e) = wait(b, child) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn spawn(batch: &Batch) -> Result<Child, LabError> {
    let Batch { netns, step, lines } = batch;
    let mut cmd = Command::new("ip");
    cmd.args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::trace!(
        netns = netns.as_str(),
        step,
        "ip -batch:\n{}",
        lines.join("\n")
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("{step}: spawn ip"), netns, e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut text = lines.join("\n");
    text.push('\n');
    stdin
        .write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("{step}: write ip batch"), netns, e))?;
    drop(stdin);
    Ok(child)
}

fn wait(batch: &Batch, child: Child) -> Result<(), LabError> {
    let Batch { netns, step, lines } = batch;
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("{step}: wait for ip"), netns, e))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "Command failed -:N" names the failing line; show it.
    let failed_line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Command failed -:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .and_then(|n| lines.get(n.wrapping_sub(1)))
        .map(|l| format!(" (line: `{l}`)"))
        .unwrap_or_default();
    Err(LabError::Command {
        step: step.to_string(),
        netns: netns.clone(),
        detail: format!("ip: {}{failed_line}", stderr.trim()),
    })
}
