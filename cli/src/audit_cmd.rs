use std::process::ExitCode;

use anyhow::Result;
use portcullis_policy::audit::{audit, Severity};

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
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::parse(text).ok_or_else(|| format!("{text:?} is not info, low, medium or high"))
}

pub fn run(args: AuditArgs) -> Result<ExitCode> {
    let (snapshot, rejected) = load_reporting(&args.source)?;
    let findings = audit(&snapshot);
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
