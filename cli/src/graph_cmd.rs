//! `portcullis graph`: who may talk to whom, as DOT, SVG or a self-contained HTML page on
//! standard output (the graph itself is built and drawn by `portcullis_policy::graph`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use portcullis_policy::graph::{connectivity, to_dot, to_html, to_svg, Focus};
use portcullis_policy::probe::{parse_probes, ProbeEndpoint};

use crate::{load_reporting, SourceArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphOutput {
    /// Graphviz DOT.
    Dot,
    /// A standalone SVG drawing.
    Svg,
    /// One offline HTML page: the drawing, a namespace filter, search, and per-pod details.
    Html,
}

#[derive(clap::Args)]
pub struct GraphArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Keep only this namespace's pods, their connections and the nodes at the other end.
    #[arg(long, conflicts_with = "pod")]
    namespace: Option<String>,
    /// Keep only this pod (`namespace/pod`), its connections and the nodes at the other end.
    #[arg(long)]
    pod: Option<String>,
    /// Probe file (as for `explain`): each probe is drawn as an extra edge marked allow or deny.
    #[arg(long)]
    probes: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = GraphOutput::Dot)]
    output: GraphOutput,
}

fn focus_of(args: &GraphArgs) -> Result<Focus> {
    if let Some(namespace) = &args.namespace {
        return Ok(Focus::Namespace(namespace.clone()));
    }
    match args.pod.as_deref().map(ProbeEndpoint::parse) {
        None => Ok(Focus::Everything),
        Some(Ok(ProbeEndpoint::Pod { namespace, name })) => Ok(Focus::Pod { namespace, name }),
        Some(_) => Err(anyhow!("--pod takes namespace/pod")),
    }
}

pub fn run(args: GraphArgs) -> Result<ExitCode> {
    let focus = focus_of(&args)?;
    let probes = match &args.probes {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse_probes(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let (snapshot, rejected) = load_reporting(&args.source)?;
    let graph = connectivity(&snapshot, &probes, &focus)?;
    let text = match args.output {
        GraphOutput::Dot => to_dot(&graph),
        GraphOutput::Svg => to_svg(&graph),
        GraphOutput::Html => to_html(&graph, "portcullis graph").context("encoding the graph")?,
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to standard output")?;
    Ok(if rejected {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
