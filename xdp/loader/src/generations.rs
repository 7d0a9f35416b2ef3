//! The update protocol both loaders share. Two generations live side by side: group and rule-set
//! ids carry the parity in `GENERATION_ID_BIT`, address keys carry it in a field. The inactive one
//! holds the tables of two applies ago and is brought to the new tables by a delta (the
//! compiler's ids are stable, so only entries a change reaches are written or deleted); then one
//! write of `CONFIG.generation` switches every CPU to it. A packet sees either the whole old or the
//! whole new policy, and an update costs in proportion to what changed.

use std::time::{Duration, Instant};

use portcullis_common::GENERATION_ID_BIT;
use tracing::info;

use crate::error::Result;
use crate::maps::{Delta, PolicyMaps};
use crate::tables::{
    check_prefix_entries, generation_id, validate, GroupPolicies, PolicyTables, TableSizes,
};

/// What one apply wrote and how long it took.
#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    /// Parity of the generation now active.
    pub generation: u32,
    /// Sizes of the tables now in force.
    pub tables: TableSizes,
    /// Map entries written and deleted to bring the inactive generation to these tables.
    pub written: usize,
    pub deleted: usize,
    /// From the start of the apply to the switch.
    pub write: Duration,
}

/// What each generation holds, and the policies of the groups this process wrote.
pub struct Generations<T> {
    /// Per parity: the tables that generation holds; `None` when unknown (adopted pins, an
    /// interrupted write), then its entries are found by iterating and rewritten once.
    installed: [Option<T>; 2],
    /// Per parity: its `PREFIXES` entries (prefixes + markers), valid while `installed` is known.
    prefix_entries: [usize; 2],
    group_policies: GroupPolicies,
}

impl<T: PolicyTables> Generations<T> {
    /// `adopting`: the maps come from pins, their content is unknown.
    pub fn new(adopting: bool) -> Generations<T> {
        let known = || (!adopting).then(T::default);
        Generations {
            installed: [known(), known()],
            prefix_entries: [0; 2],
            group_policies: GroupPolicies::new(),
        }
    }

    pub fn group_policies(&self) -> &GroupPolicies {
        &self.group_policies
    }

    /// Validates `tables`, writes them into the inactive generation (the shared maps here,
    /// the program's own maps through `write_own(old, parity)`, where `old` is what that
    /// generation holds, `None` when unknown) and switches to it. On error before the switch the
    /// active generation is untouched.
    pub fn apply(
        &mut self,
        maps: &mut PolicyMaps,
        tables: &T,
        write_own: impl FnOnce(Option<&T>, u32) -> Result<Delta>,
    ) -> Result<ApplyStats> {
        let start = Instant::now();
        validate(tables)?;
        let next = 1 - maps.generation()?;
        // An unknown generation is emptied first.
        let base = match self.installed[next as usize] {
            Some(_) => self.prefix_entries[next as usize],
            None => 0,
        };
        check_prefix_entries(self.installed[next as usize].as_ref(), base, tables)?;
        // Until the write completes the inactive generation's content is unknown.
        let old = self.installed[next as usize].take();
        let mut delta = maps.write_delta(old.as_ref(), tables, next)?;
        delta += write_own(old.as_ref(), next)?;
        let prefix_entries = base.saturating_add_signed(delta.prefix_entries);
        self.prefix_entries[next as usize] = prefix_entries;
        self.installed[next as usize] = Some(tables.clone());
        maps.switch_generation(next)?;
        let write = start.elapsed();
        info!(
            generation = next,
            written = delta.written,
            deleted = delta.deleted,
            "switched policy generation"
        );
        self.group_policies
            .retain(|id, _| id & GENERATION_ID_BIT != next * GENERATION_ID_BIT);
        for gi in 0..tables.group_count() {
            let policies = tables.group_policies(gi);
            if !policies.is_empty() {
                self.group_policies
                    .insert(generation_id(gi, next), policies.to_vec());
            }
        }
        Ok(ApplyStats {
            generation: next,
            tables: TableSizes {
                prefix_entries,
                ..tables.sizes()
            },
            written: delta.written,
            deleted: delta.deleted,
            write,
        })
    }
}
