//! Reading the per-CPU counters back, summed over CPUs.

use aya::maps::{MapData, MapError, PerCpuArray};
use lb_common::{Counter, Traffic};

use super::{Dataplane, maps::DataplaneError};

/// The global counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterSnapshot(pub Vec<(Counter, u64)>);

impl CounterSnapshot {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0
            .iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, v)| *v)
    }
}

/// One service's or backend's traffic, summed over CPUs.
pub type TrafficSnapshot = Traffic;

fn err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn sum_traffic(
    map: &PerCpuArray<MapData, Traffic>,
    index: u32,
    name: &'static str,
) -> Result<Traffic, DataplaneError> {
    let per_cpu = map.get(&index, 0).map_err(err(name))?;
    Ok(per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
        packets: a.packets + t.packets,
        bytes: a.bytes + t.bytes,
        new_flows: a.new_flows + t.new_flows,
    }))
}

impl Dataplane {
    /// Every global counter, summed over CPUs.
    pub fn counters(&self) -> Result<CounterSnapshot, DataplaneError> {
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for &c in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(c as u32), 0)
                .map_err(err(lb_common::map_names::COUNTERS))?;
            out.push((c, per_cpu.iter().sum()));
        }
        Ok(CounterSnapshot(out))
    }

    pub fn service_traffic(&self, service_id: u32) -> Result<Traffic, DataplaneError> {
        sum_traffic(
            &self.service_stats,
            service_id,
            lb_common::map_names::SERVICE_STATS,
        )
    }

    pub fn backend_traffic(&self, backend_id: u32) -> Result<Traffic, DataplaneError> {
        sum_traffic(
            &self.backend_stats,
            backend_id,
            lb_common::map_names::BACKEND_STATS,
        )
    }
}
