use std::io;
use std::net::IpAddr;

use crate::command::CommandError;

/// Everything that can go wrong while building, probing or tearing down a lab. Each variant names
/// the step and, where there is one, the network namespace it happened in.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An `ip` (or other tool) invocation failed.
    #[error("{step} in netns {netns}: {detail}")]
    Command {
        step: String,
        netns: String,
        detail: String,
    },
    /// A system call failed.
    #[error("{step} in netns {netns}: {source}")]
    Io {
        step: String,
        netns: String,
        #[source]
        source: io::Error,
    },
    /// A probe or request names a pod the lab does not have.
    #[error("unknown pod {0}")]
    UnknownPod(String),
    /// A network namespace name that this lab did not create.
    #[error("netns {0} does not belong to this lab")]
    UnknownNetns(String),
    /// The endpoint has no address to use.
    #[error("{0} has no IP address")]
    NoAddress(String),
    /// Source and destination share no address family.
    #[error("{from} and {to} share no address family")]
    NoCommonFamily { from: String, to: String },
    /// Two things in the lab would need the same address.
    #[error("address {addr} conflicts: {detail}")]
    AddressConflict { addr: IpAddr, detail: String },
    /// The probe was not given to `Lab::build`, so nothing listens for it.
    #[error("probe {0} was not prepared at build time (no server listens for it)")]
    NotPrepared(String),
    /// The snapshot needs something the lab cannot model yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl LabError {
    pub(crate) fn io(step: impl Into<String>, netns: impl Into<String>, source: io::Error) -> Self {
        LabError::Io {
            step: step.into(),
            netns: netns.into(),
            source,
        }
    }

    /// A failed command of `step` in `netns`, with what it printed.
    pub(crate) fn command(
        step: impl Into<String>,
        netns: impl Into<String>,
        source: CommandError,
    ) -> Self {
        LabError::Command {
            step: step.into(),
            netns: netns.into(),
            detail: source.to_string(),
        }
    }
}
