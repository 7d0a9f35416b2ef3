//! The loader core both programs' loaders build on, `portcullis-gateway` (XDP) and
//! `portcullis-node` (tc): one error type, opening the object with pinned maps ([`object`]), the
//! maps both programs have ([`PolicyMaps`]: generation writes, flow GC, counters, status), the
//! update protocol ([`Generations`]), table validation ([`tables`]), the drop-event reader and
//! the keeper of pins removed under a running daemon ([`PinKeeper`]).
//! The loaders keep only what is theirs: attachment and their own maps.

mod core;
mod error;
mod events;
mod generations;
pub mod host_addrs;
mod maps;
pub mod object;
mod pin_keeper;
pub mod prefix_search;
mod status;
pub mod tables;

pub use crate::core::{test_run, Core, Datapath, TestRunOutcome};
pub use error::{delete_if_present, ignore_missing, map_err, Error, Result};
pub use events::DropEvents;
pub use generations::{ApplyStats, Generations};
pub use maps::{cpu_sums, monotonic_coarse_ns, monotonic_ns, Delta, PolicyMaps, Written};
pub use pin_keeper::PinKeeper;
pub use status::{Counters, FlowCounts, FlowRecordCounters, GroupDrops, PrefixMemory, TableStatus};
pub use tables::{generation_id, key_addr, GroupPolicies, PolicyTables, TableSizes};
