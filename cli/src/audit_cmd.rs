use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::Result;
use portcullis_policy::audit::{audit, Finding, Severity};

use crate::daemon::PublishedState;
use crate::explain_cmd::print_table;
use crate::{load_reporting, OutputFormat, SourceArgs};

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Exit with status 3 when a finding of this severity or higher exists (info, low, medium, high).
    #[arg(long, default_value = "high", value_parser = parse_severity)]
    fail_on: Severity,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// State directories of running node daemons whose local pods are checked too (a pod the
    /// daemon cannot enforce is a finding); default: this machine's node daemon, if one runs.
    #[arg(long)]
    node_state: Vec<PathBuf>,
}

/// A finding for every pod a node daemon reports it cannot enforce (high when a policy selects
/// it: its policy is silently not in force).
fn unenforced_pods(state_dirs: &[PathBuf]) -> Vec<Finding> {
    let default = [PathBuf::from(crate::node::DEFAULT_STATE_DIR)];
    let dirs = if state_dirs.is_empty() {
        &default[..]
    } else {
        state_dirs
    };
    dirs.iter()
        .filter_map(|d| Some((d, PublishedState::read(d)?)))
        .flat_map(|(dir, state)| {
            state
                .pods
                .into_iter()
                .filter(|p| !p.attached)
                .map(move |p| Finding {
                    severity: if p.selected {
                        Severity::High
                    } else {
                        Severity::Low
                    },
                    check: "pod-not-enforced",
                    object: p.pod.clone(),
                    message: format!(
                        "the node daemon ({}) cannot enforce this pod{}: {}",
                        dir.display(),
                        if p.selected {
                            ", so the policies selecting it are not in force"
                        } else {
                            ""
                        },
                        p.error.as_deref().unwrap_or("no interface")
                    ),
                })
        })
        .collect()
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::parse(text).ok_or_else(|| format!("{text:?} is not info, low, medium or high"))
}

pub fn run(args: AuditArgs) -> Result<ExitCode> {
    let (snapshot, rejected) = load_reporting(&args.source)?;
    let mut findings = audit(&snapshot);
    findings.extend(unenforced_pods(&args.node_state));
    match args.output {
        OutputFormat::Json => {
            for f in &findings {
                println!("{}", serde_json::to_string(f)?);
            }
        }
        OutputFormat::Table => {
            let rows: Vec<[String; 4]> = findings
                .iter()
                .map(|f| {
                    [
                        f.severity.to_string(),
                        f.check.to_string(),
                        f.object.clone(),
                        f.message.clone(),
                    ]
                })
                .collect();
            print_table(&["SEVERITY", "CHECK", "OBJECT", "FINDING"], &rows);
            println!("{} findings", findings.len());
        }
    }
    Ok(if findings.iter().any(|f| f.severity >= args.fail_on) {
        ExitCode::from(3)
    } else if rejected {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
