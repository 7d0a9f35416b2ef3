//! `portcullis explain`: the verdict of every probe, with the policies and rules behind it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use portcullis_policy::explain;
use portcullis_policy::probe::{parse_probe_specs, ProbeSpec};

use crate::{load_reporting, OutputFormat, SourceArgs};

#[derive(clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Probe file: a YAML list of {from, to, port, protocol} (see the conformance README).
    #[arg(long, conflicts_with_all = ["from", "to", "port"])]
    probes: Option<PathBuf>,
    /// Source: `namespace/pod` or an external IP address.
    #[arg(long, requires_all = ["to", "port"])]
    from: Option<String>,
    /// Destination: `namespace/pod` or an external IP address.
    #[arg(long)]
    to: Option<String>,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// The probes as asked. Each is parsed on its own when it is answered, so a malformed probe costs
/// only its own line; a file that is not a list of probes is refused whole.
fn specs_of(args: &ExplainArgs) -> Result<Vec<ProbeSpec>> {
    if let Some(path) = &args.probes {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return parse_probe_specs(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    match (&args.from, &args.to, args.port) {
        (Some(from), Some(to), Some(port)) => Ok(vec![ProbeSpec {
            from: from.clone(),
            to: to.clone(),
            port,
            protocol: args.protocol.to_uppercase(),
            expect: None,
        }]),
        _ => bail!("give --probes FILE, or --from, --to and --port"),
    }
}

/// Answers every probe, one line each in order; a probe that cannot be answered gets an `error`
/// line (and a message on stderr) and makes the exit status 2, after the rest are answered.
pub fn run(args: ExplainArgs) -> Result<ExitCode> {
    let specs = specs_of(&args)?;
    let (snapshot, rejected) = load_reporting(&args.source)?;
    let mut rows = Vec::new();
    let mut unanswered = false;
    for spec in &specs {
        let answer = spec.to_probe().and_then(|probe| {
            let verdict = snapshot.evaluate_probe(&probe).map_err(|e| e.to_string())?;
            Ok((probe, verdict))
        });
        match answer {
            Ok((probe, verdict)) => {
                // Probes from a pod to outside the cluster also say how they leave.
                let egress = explain::egress_explained(&snapshot, &probe, &verdict);
                match args.output {
                    OutputFormat::Json => {
                        let mut object = explain::to_json(&probe, &verdict);
                        if let Some(egress) = &egress {
                            explain::add_egress_json(&mut object, egress);
                        }
                        println!("{object}");
                    }
                    OutputFormat::Table => {
                        let mut why = explain::reason(&probe, &verdict);
                        if let Some(text) = egress.as_ref().and_then(explain::egress_text) {
                            why = format!("{why}; {text}");
                        }
                        rows.push([
                            probe.from.to_string(),
                            probe.to.to_string(),
                            format!("{}/{}", probe.protocol, probe.port),
                            if verdict.allowed() { "allow" } else { "DENY" }.to_string(),
                            why,
                        ]);
                    }
                }
            }
            Err(why) => {
                unanswered = true;
                let error = format!("probe {spec}: {why}");
                eprintln!("error: {error}");
                match args.output {
                    OutputFormat::Json => println!("{}", explain::error_json(spec, &error)),
                    OutputFormat::Table => rows.push([
                        spec.from.clone(),
                        spec.to.clone(),
                        format!("{}/{}", spec.protocol, spec.port),
                        "ERROR".to_string(),
                        error,
                    ]),
                }
            }
        }
    }
    if args.output == OutputFormat::Table {
        print_table(&["FROM", "TO", "PORT", "VERDICT", "WHY"], &rows);
    }
    Ok(if unanswered {
        ExitCode::from(2)
    } else if rejected {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints aligned columns; the last column is left unpadded.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
