//! Compiles a snapshot into the kernel tables: the gateway's (`gateway`: pod address → policy
//! group, and per group a set of peer prefixes whose longest match gives the exact union of port
//! rules allowed there) and the node hooks' ([`node`]: the same plus pod identities).
//!
//! Shared by both: `groups` (grouping pods by the policies selecting them, ids and cache kept
//! across compiles), `prefixes` (ipBlocks flattened to longest-prefix-match tables), `rules`
//! (port rules), `stable` (numbering that survives recompiles), and `kernel_abi` (the limits
//! and address layout the kernel datapath fixes).

mod gateway;
mod groups;
mod kernel_abi;
pub mod node;
mod prefixes;
mod rules;
mod stable;

pub use gateway::{compile_gateway, GatewayCompiler, GatewayGroup, GatewayTables};
pub use groups::EndpointGroups;
pub use kernel_abi::MAX_PORT_RANGES;
pub(crate) use rules::port_rules;
pub use rules::PortRule;

use crate::model::Direction;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{policies}: {direction} rules allow {count} disjoint port ranges at one prefix; the datapath holds at most {max}")]
    TooManyPortRanges {
        policies: String,
        direction: Direction,
        count: usize,
        max: usize,
    },
}
