//! Reading the XDP program's counters.

use aya::maps::{MapData, PerCpuArray};
use xdpdns_common::maps::XdpOutcome;

/// Frames per outcome, summed over all CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpCounters {
    pub by_outcome: Vec<(XdpOutcome, u64)>,
}

impl XdpCounters {
    pub fn read(map: &PerCpuArray<MapData, u64>) -> Self {
        let by_outcome = XdpOutcome::ALL
            .iter()
            .map(|o| {
                let n = map
                    .get(&(*o as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*o, n)
            })
            .collect();
        XdpCounters { by_outcome }
    }

    pub fn get(&self, outcome: XdpOutcome) -> u64 {
        self.by_outcome
            .iter()
            .find(|(o, _)| *o == outcome)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}
