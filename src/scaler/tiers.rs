//! Scaling up vs out: one decision for the pools of a tier (one model on several replica
//! profiles — e.g. L4s and H100s — each a pool with its own replicas, price and cold start).
//! Load and capacity are counted in units of throughput: a request in flight on a pool counts
//! for its pool's `scaler.speed` (relative to the tier's reference pool, so that a slow pool's
//! long answers do not read as more demand), and a replica for `targets.concurrency` such
//! requests. The pools' observations add up into one [`Observation`] that the first pool's
//! `infergate` policy sizes ([`combine`], [`unit_config`]); [`allocate`] buys that capacity
//! from the pools at the least cost per hour. [`TierScaler`] holds the two together; the
//! control loop and the fleet simulation call it alike.

use super::policy::{self, Observation, Policy, Recommendation, SharedBursts};
use crate::config::{Scaler, SloTarget};

/// Units per request in flight at speed 1 (finer than whole requests: the policy counts whole
/// units).
pub const UNITS_PER_REQUEST: f64 = 10.0;

/// A pool of the tier as its scaler is configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// Requests in flight one replica is sized for (`targets.concurrency`).
    pub concurrency: f64,
    /// Price of a replica-hour.
    pub price: f64,
    pub min: u32,
    pub max: u32,
    /// Units one request in flight counts for: [`UNITS_PER_REQUEST`] × `scaler.speed`.
    pub per_request: f64,
}

impl Member {
    pub fn of(scaler: &Scaler) -> Self {
        Self {
            concurrency: scaler.targets.concurrency,
            price: scaler.replica_cost_per_hour.unwrap_or(1.0),
            min: scaler.min_replicas,
            max: scaler.max_replicas,
            per_request: UNITS_PER_REQUEST * scaler.speed,
        }
    }

    fn units(&self, replicas: u32) -> f64 {
        f64::from(replicas) * self.concurrency * self.per_request
    }
}

/// A tier's scaler between ticks: its pools, how fast each serves, and the policy that sizes
/// them together. One per tier, in the control loop and in the fleet simulation alike.
pub struct TierScaler {
    members: Vec<Member>,
    policy: Box<dyn Policy>,
}

impl TierScaler {
    /// `first`, `slo`: the first pool's; `pools`: every pool's scaler settings, in tier order;
    /// `kept`: the bursts learned under a previous config.
    pub fn new(
        first: &Scaler,
        slo: Option<SloTarget>,
        kept: Option<SharedBursts>,
        pools: &[&Scaler],
    ) -> Self {
        let members: Vec<Member> = pools.iter().map(|s| Member::of(s)).collect();
        // A rise is a burst above what the largest replica is sized for: the tier holds the
        // headroom its largest pool alone would (smaller replicas fill in, not cover more).
        let floor = members.iter().map(|m| m.units(1)).fold(0.0, f64::max);
        Self {
            policy: policy::build_tier(first, slo, kept, floor),
            members,
        }
    }

    /// The bursts its policy learned, for a reload to go on from.
    pub fn bursts(&self) -> Option<SharedBursts> {
        self.policy.bursts()
    }

    /// One decision from the pools' observations (in tier order): what the tier needs, in
    /// units, and the replicas each pool gets.
    pub fn decide(&mut self, observations: &[Observation]) -> (Recommendation, Vec<u32>) {
        let rec = self.policy.recommend(&combine(&self.members, observations));
        let counts = allocate(&self.members, rec.desired, observations);
        (rec, counts)
    }
}

/// A change of mix is made only when it costs less than this share of keeping the mix: a
/// swap pays for both while the new replicas start.
pub const SWAP_SAVING: f64 = 0.1;

/// The tier's policy settings: the first pool's, with a target of one unit per unit and no
/// bounds of its own ([`allocate`] keeps each pool within its `min_replicas`..`max_replicas`;
/// the tier scales down by whole replicas as the stabilisation window allows).
pub fn unit_config(first: &Scaler) -> Scaler {
    let mut config = first.clone();
    config.targets.concurrency = 1.0;
    config.min_replicas = 0;
    config.max_replicas = u32::MAX / 2;
    config.max_scale_down_step = u32::MAX / 2;
    config
}

/// The tier's observation from its pools' (in tier order), in units: replicas and requests
/// weighted by their units, arrivals summed, KV-cache and GPU use averaged over the ready
/// capacity that reported them, the longest wait, and the longest cold start (the pool grown
/// may be the slowest to start).
pub fn combine(members: &[Member], observations: &[Observation]) -> Observation {
    let weighted = |count: fn(&Observation) -> u32| {
        members
            .iter()
            .zip(observations)
            .map(|(m, o)| m.units(count(o)))
            .sum::<f64>()
            .round() as u32
    };
    let mean = |reading: fn(&Observation) -> Option<f64>| {
        let (sum, weight) = members
            .iter()
            .zip(observations)
            .filter_map(|(m, o)| Some((reading(o)?, m.units(o.ready.max(1)))))
            .fold((0.0, 0.0), |(s, w), (v, u)| (s + v * u, w + u));
        (weight > 0.0).then(|| sum / weight)
    };
    let first = observations.first().cloned().unwrap_or_default();
    Observation {
        now: first.now,
        ready: weighted(|o| o.ready),
        starting: weighted(|o| o.starting),
        inflight: weighted_load(members, observations, |o| o.inflight),
        queued: weighted_load(members, observations, |o| o.queued),
        kv_cache_usage: mean(|o| o.kv_cache_usage),
        gpu_utilization: mean(|o| o.gpu_utilization),
        queue_wait: observations
            .iter()
            .filter_map(|o| o.queue_wait)
            .reduce(f64::max),
        cold_start: observations
            .iter()
            .map(|o| o.cold_start)
            .fold(0.0, f64::max),
        arrivals: observations.iter().map(|o| o.arrivals).sum(),
        clock_start: first.clock_start,
    }
}

/// Requests summed as units.
fn weighted_load(
    members: &[Member],
    observations: &[Observation],
    count: fn(&Observation) -> u64,
) -> u64 {
    members
        .iter()
        .zip(observations)
        .map(|(m, o)| count(o) as f64 * m.per_request)
        .sum::<f64>()
        .round() as u64
}

/// Replicas per pool for `desired` units, given each pool's ready and starting replicas and
/// requests queued. The cheapest mix that covers `desired`, each pool within its bounds,
/// unless the current mix, grown (or shrunk) to cover it, costs less than [`SWAP_SAVING`]
/// more. A pool shrinks only while no pool grows or starts (the capacity replacing it must
/// be ready first), and a pool holding requests with no replica ready or starting gets one.
pub fn allocate(members: &[Member], desired: u32, observations: &[Observation]) -> Vec<u32> {
    let desired = f64::from(desired);
    let current: Vec<u32> = observations.iter().map(|o| o.ready + o.starting).collect();
    let full: Vec<(u32, u32)> = members.iter().map(|m| (m.min, m.max)).collect();
    let cheapest_mix = cheapest(members, desired, &full);
    let have: f64 = members.iter().zip(&current).map(|(m, &n)| m.units(n)).sum();
    // The current mix grown or shrunk, never both.
    let around: Vec<(u32, u32)> = members
        .iter()
        .zip(&current)
        .map(|(m, &n)| {
            let n = n.clamp(m.min, m.max);
            if desired >= have {
                (n, m.max)
            } else {
                (m.min, n)
            }
        })
        .collect();
    let kept = cheapest(members, desired, &around);
    let mut plan = if cost(members, &cheapest_mix) < (1.0 - SWAP_SAVING) * cost(members, &kept) {
        cheapest_mix
    } else {
        kept
    };
    let growing = plan.iter().zip(&current).any(|(p, c)| p > c)
        || observations.iter().any(|o| o.starting > 0);
    for (i, n) in plan.iter_mut().enumerate() {
        if growing && *n < current[i] {
            *n = current[i];
        }
        if current[i] == 0 && *n == 0 && observations[i].queued > 0 {
            *n = 1.min(members[i].max);
        }
    }
    plan
}

fn cost(members: &[Member], counts: &[u32]) -> f64 {
    members
        .iter()
        .zip(counts)
        .map(|(m, &n)| m.price * f64::from(n))
        .sum()
}

/// The least costly counts within `bounds` whose capacity covers `desired` (on a tie, the one
/// with more capacity, then the earlier found); all at their upper bound when none covers it.
fn cheapest(members: &[Member], desired: f64, bounds: &[(u32, u32)]) -> Vec<u32> {
    let mut best: Option<(f64, f64, Vec<u32>)> = None;
    let mut counts: Vec<u32> = bounds.iter().map(|b| b.0).collect();
    search(members, desired, bounds, 0, &mut counts, &mut best);
    best.map(|(_, _, counts)| counts)
        .unwrap_or_else(|| bounds.iter().map(|b| b.1).collect())
}

/// Tries every count of the pools before the last; the last takes what remains.
fn search(
    members: &[Member],
    desired: f64,
    bounds: &[(u32, u32)],
    at: usize,
    counts: &mut Vec<u32>,
    best: &mut Option<(f64, f64, Vec<u32>)>,
) {
    let last = members.len() - 1;
    if at == last {
        let covered: f64 = (0..last).map(|i| members[i].units(counts[i])).sum();
        let m = &members[last];
        let need = ((desired - covered) / m.units(1)).ceil().max(0.0);
        let (lo, hi) = bounds[last];
        if need > f64::from(hi) {
            return;
        }
        counts[last] = (need as u32).max(lo);
        let (price, units) = (cost(members, counts), covered + m.units(counts[last]));
        let better = match best {
            None => true,
            Some((p, u, _)) => price < *p - 1e-9 || (price <= *p + 1e-9 && units > *u),
        };
        if better {
            *best = Some((price, units, counts.clone()));
        }
        return;
    }
    for n in bounds[at].0..=bounds[at].1 {
        counts[at] = n;
        search(members, desired, bounds, at + 1, counts, best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Speed 1 both (a unit per request in flight) unless a test says otherwise.
    const L4: Member = Member {
        concurrency: 8.0,
        price: 0.8,
        min: 0,
        max: 16,
        per_request: 1.0,
    };
    const H100: Member = Member {
        concurrency: 64.0,
        price: 3.5,
        min: 0,
        max: 4,
        per_request: 1.0,
    };

    fn obs(ready: u32, starting: u32) -> Observation {
        Observation {
            ready,
            starting,
            ..Default::default()
        }
    }

    #[test]
    fn capacity_is_bought_where_it_is_cheapest() {
        let tier = [L4, H100];
        let idle = [obs(0, 0), obs(0, 0)];
        // 20 units: three L4s ($2.4) beat an H100 ($3.5).
        assert_eq!(allocate(&tier, 20, &idle), vec![3, 0]);
        // 60 units: an H100 ($3.5) beats eight L4s ($6.4).
        assert_eq!(allocate(&tier, 60, &idle), vec![0, 1]);
        // 80 units: an H100 and two L4s ($5.1) beat two H100s ($7.0).
        assert_eq!(allocate(&tier, 80, &idle), vec![2, 1]);
        // More than everything: everything.
        assert_eq!(allocate(&tier, 10_000, &idle), vec![16, 4]);
    }

    #[test]
    fn a_mix_changes_only_for_a_real_saving_and_shrinks_after_its_replacement_is_ready() {
        let tier = [L4, H100];
        // Five ready L4s ($4.0) cover 40; an H100 ($3.5) is 12.5 % cheaper: swap, the L4s stay
        // while it starts.
        let five_l4 = [obs(5, 0), obs(0, 0)];
        assert_eq!(allocate(&tier, 40, &five_l4), vec![5, 1]);
        let starting = [obs(5, 0), obs(0, 1)];
        assert_eq!(
            allocate(&tier, 40, &starting),
            vec![5, 1],
            "held while it starts"
        );
        let ready = [obs(5, 0), obs(1, 0)];
        assert_eq!(allocate(&tier, 40, &ready), vec![0, 1], "then the L4s go");
        // Two L4s grow by one for 24.
        let two_l4 = [obs(2, 0), obs(0, 0)];
        assert_eq!(allocate(&tier, 24, &two_l4), vec![3, 0]);
        // An H100 covering 40 is kept, not swapped for five L4s at the same price... or for
        // four L4s at 8 % less.
        let one_h100 = [obs(0, 0), obs(1, 0)];
        assert_eq!(allocate(&tier, 40, &one_h100), vec![0, 1]);
        assert_eq!(allocate(&tier, 32, &one_h100), vec![0, 1]);
    }

    #[test]
    fn bounds_hold_and_a_pool_holding_requests_gets_a_replica() {
        let tier = [Member { min: 1, ..L4 }, H100];
        let idle = [obs(1, 0), obs(0, 0)];
        assert_eq!(allocate(&tier, 0, &idle), vec![1, 0], "min_replicas");
        let waiting = [
            obs(1, 0),
            Observation {
                queued: 3,
                ..obs(0, 0)
            },
        ];
        assert_eq!(
            allocate(&tier, 8, &waiting),
            vec![1, 1],
            "its queue waits on it"
        );
    }

    #[test]
    fn the_tier_is_observed_in_units_of_throughput() {
        // The H100 serves a request 4 times faster: a request there counts for 4 units.
        let tier = [
            L4,
            Member {
                per_request: 4.0,
                ..H100
            },
        ];
        let l4 = Observation {
            ready: 3,
            starting: 1,
            inflight: 20,
            queued: 2,
            kv_cache_usage: Some(0.5),
            queue_wait: Some(1.0),
            cold_start: 30.0,
            arrivals: 7,
            ..Default::default()
        };
        let h100 = Observation {
            ready: 1,
            inflight: 40,
            kv_cache_usage: Some(0.2),
            cold_start: 120.0,
            arrivals: 9,
            ..Default::default()
        };
        let both = combine(&tier, &[l4, h100]);
        assert_eq!((both.ready, both.starting), (3 * 8 + 64 * 4, 8));
        assert_eq!(
            (both.inflight, both.queued, both.arrivals),
            (20 + 40 * 4, 2, 16)
        );
        // KV use weighted by the ready capacity: (0.5·24 + 0.2·256) / 280.
        let kv = both.kv_cache_usage.unwrap();
        assert!(
            (kv - (0.5 * 24.0 + 0.2 * 256.0) / 280.0).abs() < 1e-9,
            "{kv}"
        );
        assert_eq!((both.queue_wait, both.cold_start), (Some(1.0), 120.0));
        let config = unit_config(&crate::config::embedded_default().pools[0].scaler);
        assert_eq!(config.targets.concurrency, 1.0);
        assert_eq!(
            config.min_replicas, 0,
            "each pool's bounds hold in allocate"
        );
        // 256 units of H100 (0.25 of its price per unit) beat 32 L4s.
        assert_eq!(allocate(&tier, 250, &[obs(0, 0), obs(0, 0)]), vec![0, 1]);
    }
}
