//! What a differential run is asked for ([`Settings`]), what it found ([`Summary`],
//! [`Disagreement`]) and the counting the gateway's and the node's runs share ([`Schedule`]).

use std::fmt;

use portcullis_policy::model::Snapshot;

use super::PACKETS_PER_SNAPSHOT;

/// The size and seed of a run.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Packets generated (judged, unless `update` names one update).
    pub packets: usize,
    pub seed: u64,
    /// Judge only the packets of this update (the others are generated and the updates applied
    /// as in the full run, so it is the same case, found again quickly); the run stops after it.
    pub update: Option<usize>,
}

impl Settings {
    /// `PORTCULLIS_DIFF_PACKETS` (default 100k) and `PORTCULLIS_DIFF_SEED`.
    pub fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Settings {
            packets: var("PORTCULLIS_DIFF_PACKETS").map_or(100_000, |n: u64| n as usize),
            seed: var("PORTCULLIS_DIFF_SEED").unwrap_or(0x5eed),
            update: None,
        }
    }
}

/// What a run checked: packets judged, policy updates put in force (the first tables included)
/// and disagreements with the oracle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub packets: usize,
    pub updates: usize,
    pub disagreements: usize,
}

/// A datapath's decision that differs from the oracle's. The run is deterministic from its
/// seed: the same seed and packet count with `update` set finds it again.
#[derive(Clone, Debug)]
pub struct Disagreement {
    pub seed: u64,
    /// Packets generated in the run.
    pub packets: usize,
    /// Number of the packet in the run (from 0).
    pub packet: usize,
    /// Number of the update (snapshot) in force (from 0).
    pub update: usize,
    /// The packet, its frame and what each side decided.
    pub detail: String,
    /// The policies in force.
    pub policies: String,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} update #{} packet #{} (rerun: --seed {} --packets {} --update {}): {}\npolicies: {}",
            self.seed,
            self.update,
            self.packet,
            self.seed,
            self.packets,
            self.update,
            self.detail,
            self.policies
        )
    }
}

/// A run's progress: a new update every `PACKETS_PER_SNAPSHOT` packets generated.
pub(super) struct Schedule {
    settings: Settings,
    generated: usize,
    /// Updates begun.
    begun: usize,
    summary: Summary,
}

impl Schedule {
    pub(super) fn new(settings: Settings) -> Schedule {
        Schedule {
            settings,
            generated: 0,
            begun: 0,
            summary: Summary::default(),
        }
    }

    /// Begins the next update: the number of its packets, none when the run is over.
    pub(super) fn next_update(&mut self) -> Option<usize> {
        let past_the_one = (self.settings.update).is_some_and(|u| self.begun > u);
        if self.generated >= self.settings.packets || past_the_one {
            return None;
        }
        self.begun += 1;
        self.summary.updates += 1;
        Some(PACKETS_PER_SNAPSHOT.min(self.settings.packets - self.generated))
    }

    /// The number of the update in force (from 0).
    pub(super) fn update(&self) -> usize {
        self.begun - 1
    }

    /// Whether this update's packets are judged.
    pub(super) fn judged(&self) -> bool {
        (self.settings.update).is_none_or(|u| u == self.update())
    }

    /// Counts a packet generated, judged or not; `disagreement` (its detail) is reported.
    pub(super) fn count(
        &mut self,
        judged: bool,
        disagreement: Option<String>,
        snapshot: &Snapshot,
        report: &mut dyn FnMut(Disagreement),
    ) {
        if let Some(detail) = disagreement {
            self.summary.disagreements += 1;
            report(Disagreement {
                seed: self.settings.seed,
                packets: self.settings.packets,
                packet: self.generated,
                update: self.update(),
                detail,
                policies: format!("{:?}", snapshot.policies),
            });
        }
        self.summary.packets += usize::from(judged);
        self.generated += 1;
    }

    pub(super) fn summary(&self) -> Summary {
        self.summary
    }
}
