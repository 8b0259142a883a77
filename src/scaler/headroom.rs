//! Headroom for bursts, learned from the pool's own traffic: replicas asked for now serve
//! only after a cold start, so a scaler that is to meet an SLO must already hold what the
//! demand can rise to within one. [`Burstiness`] keeps the arrival rate the scaler saw
//! (smoothed over its up window) and, for every moment with a horizon of history before it, how
//! many times the rate of a horizon earlier it was. The headroom factor is the request-weighted
//! quantile of those ratios at the SLO's attainment target: holding `factor × load` would have
//! had capacity ready for that share of the past requests. Arrivals, not concurrency: a backlog
//! or answers slowed by overload inflate concurrency well past what the demand was.

use std::collections::VecDeque;

/// How long the history reaches back: a day, so a daily shape's steepest hour is in it.
pub const HISTORY_SECS: f64 = 24.0 * 3600.0;

/// The quantile is recomputed at most this often (seconds): a day of ratios takes a few
/// milliseconds to sort.
const REFRESH_SECS: f64 = 10.0;

/// The smoothed demand at one moment.
#[derive(Debug, Clone, Copy)]
struct Moment {
    t: f64,
    /// Arrivals per second.
    rate: f64,
    /// Requests in flight and queued.
    load: f64,
}

#[derive(Debug)]
pub struct Burstiness {
    /// (time, arrivals, load): raw samples over the smoothing window.
    recent: VecDeque<(f64, u64, f64)>,
    smoothed: VecDeque<Moment>,
    /// Sums of `smoothed`'s rates and loads: their ratio turns one replica's load target into
    /// a rate (Little's law), the least a rise is measured from.
    sum_rate: f64,
    sum_load: f64,
    /// (time, ratio to a horizon earlier, weight).
    ratios: VecDeque<(f64, f64, f64)>,
    /// The load one replica is sized for: a pool holds at least one, so a rise from near
    /// nothing is a rise from one replica's worth.
    floor_load: f64,
    smoothing: f64,
    /// The last quantile: when, at which attainment, and the factor.
    cached: Option<(f64, f64, f64)>,
}

impl Burstiness {
    /// `floor_load`: the load one replica is sized for; `smoothing`: the window the demand is
    /// averaged over (seconds), as the scaler averages its load.
    pub fn new(floor_load: f64, smoothing: f64) -> Self {
        Self {
            recent: VecDeque::new(),
            smoothed: VecDeque::new(),
            sum_rate: 0.0,
            sum_load: 0.0,
            ratios: VecDeque::new(),
            floor_load,
            smoothing: smoothing.max(f64::MIN_POSITIVE),
            cached: None,
        }
    }

    /// Whether this history was learned for these settings (`new`'s): a reload that changes
    /// them starts a new one.
    pub fn tuned_for(&self, floor_load: f64, smoothing: f64) -> bool {
        self.floor_load == floor_load && self.smoothing == smoothing.max(f64::MIN_POSITIVE)
    }

    /// Records, at `now` (seconds), the requests that arrived since the previous call and the
    /// load; `horizon`: how far ahead capacity must be asked for.
    pub fn observe(&mut self, now: f64, arrivals: u64, load: f64, horizon: f64) {
        self.recent.push_back((now, arrivals, load));
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| *t <= now - self.smoothing)
        {
            self.recent.pop_front();
        }
        // Each sample's arrivals came after the one before it: the window's rate is the
        // arrivals after its oldest sample over the time since.
        let Some(&(oldest, _, _)) = self.recent.front().filter(|(t, _, _)| *t < now) else {
            return;
        };
        let n = self.recent.len() as f64;
        let moment = Moment {
            t: now,
            rate: self
                .recent
                .iter()
                .skip(1)
                .map(|(_, a, _)| *a as f64)
                .sum::<f64>()
                / (now - oldest),
            load: self.recent.iter().map(|(_, _, l)| l).sum::<f64>() / n,
        };
        if let Some(base) = self.at_or_before(now - horizon)
            && moment.rate > 0.0
        {
            let floor = self.floor_load * self.sum_rate / self.sum_load.max(f64::MIN_POSITIVE);
            self.ratios
                .push_back((now, moment.rate / base.rate.max(floor), moment.rate));
        }
        self.smoothed.push_back(moment);
        self.sum_rate += moment.rate;
        self.sum_load += moment.load;
        let oldest = now - HISTORY_SECS;
        while let Some(old) = self.smoothed.front().copied().filter(|m| m.t < oldest) {
            self.smoothed.pop_front();
            self.sum_rate -= old.rate;
            self.sum_load -= old.load;
        }
        while self.ratios.front().is_some_and(|(t, _, _)| *t < oldest) {
            self.ratios.pop_front();
        }
    }

    /// The smoothed demand at the latest moment no later than `t`, if the history reaches
    /// back that far.
    fn at_or_before(&self, t: f64) -> Option<Moment> {
        let after = self.smoothed.partition_point(|m| m.t <= t);
        after.checked_sub(1).map(|i| self.smoothed[i])
    }

    /// The factor by which to multiply the load so that `attainment` of the past requests
    /// would have found the capacity ready; 1 until a horizon of history is seen or while no
    /// request has arrived.
    pub fn factor(&mut self, now: f64, attainment: f64) -> f64 {
        if let Some((at, of, factor)) = self.cached
            && now - at < REFRESH_SECS
            && of == attainment
        {
            return factor;
        }
        let mut ratios: Vec<(f64, f64)> = self.ratios.iter().map(|(_, r, w)| (*r, *w)).collect();
        ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = ratios.iter().map(|(_, w)| w).sum();
        let mut factor = 1.0;
        if total > 0.0 {
            let mut seen = 0.0;
            for (ratio, weight) in ratios {
                seen += weight;
                factor = ratio;
                if seen >= attainment * total {
                    break;
                }
            }
        }
        let factor = factor.max(1.0);
        self.cached = Some((now, attainment, factor));
        factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one sample a second of `rate(t)` arrivals, each in flight for a second (so the
    /// load is the rate), for `seconds`.
    fn learn(rate: impl Fn(f64) -> f64, seconds: u32, horizon: f64) -> Burstiness {
        let mut b = Burstiness::new(10.0, 10.0);
        for s in 0..seconds {
            let r = rate(f64::from(s));
            b.observe(f64::from(s), r as u64, r, horizon);
        }
        b
    }

    #[test]
    fn steady_load_needs_no_headroom() {
        let mut b = learn(|_| 100.0, 3600, 60.0);
        assert_eq!(b.factor(3600.0, 0.99), 1.0);
    }

    #[test]
    fn nothing_is_learned_before_a_horizon_of_history() {
        // Load doubles at 30 s; the horizon is 120 s and only 100 s were seen.
        let mut b = learn(|t| if t < 30.0 { 50.0 } else { 100.0 }, 100, 120.0);
        assert_eq!(b.factor(100.0, 0.99), 1.0);
    }

    #[test]
    fn a_rise_within_the_horizon_is_the_factor_at_a_high_attainment() {
        // An hour at 100 with a 4x crowd for 90 s in the middle; horizon 120 s. The crowd is
        // 90 s of 3600 but carries 4x the weight: ~9 % of the load.
        let crowd = |t: f64| {
            if (1800.0..1890.0).contains(&t) {
                400.0
            } else {
                100.0
            }
        };
        let mut b = learn(crowd, 3600, 120.0);
        let high = b.factor(3600.0, 0.99);
        assert!((3.9..=4.0).contains(&high), "{high}");
        // At 80 % the crowd's moments are above the quantile: no headroom.
        let mut b = learn(crowd, 3600, 120.0);
        assert_eq!(b.factor(3600.0, 0.8), 1.0);
    }

    #[test]
    fn a_rise_slower_than_the_horizon_counts_only_its_share() {
        // A ramp from 100 to 700 over 600 s: within 60 s the load rises at most by 60 per
        // 100-700, i.e. ~1.6x at the start and ~1.09x at the end.
        let ramp = |t: f64| 100.0 + t.clamp(0.0, 600.0);
        let mut b = learn(ramp, 600, 60.0);
        let f = b.factor(600.0, 0.99);
        assert!(f > 1.05 && f < 1.6, "{f}");
    }

    #[test]
    fn a_backlog_is_not_a_rise_in_demand() {
        // The rate doubles for 60 s while, overloaded, the load grows tenfold: the factor
        // follows the arrivals.
        let mut b = Burstiness::new(10.0, 10.0);
        for s in 0..3600 {
            let t = f64::from(s);
            let (rate, load) = if (1800.0..1860.0).contains(&t) {
                (200, 1000.0)
            } else {
                (100, 100.0)
            };
            b.observe(t, rate, load, 120.0);
        }
        let f = b.factor(3600.0, 0.999);
        assert!((1.9..=2.0).contains(&f), "{f}");
    }

    #[test]
    fn a_rise_from_nothing_counts_from_one_replicas_worth() {
        // Idle, then 50 a second (5 replicas of 10): the ratio is 50 / 10, not 50 / 0.
        let mut b = learn(|t| if t < 300.0 { 0.0 } else { 50.0 }, 600, 30.0);
        let f = b.factor(600.0, 0.99);
        assert!((4.8..=5.0).contains(&f), "{f}");
    }
}
