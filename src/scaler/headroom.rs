//! Headroom for bursts, learned from the pool's own traffic: replicas asked for now serve
//! only after a cold start, so a scaler that is to meet an SLO must already hold what the
//! demand can rise to within one. [`Burstiness`] keeps the arrival rate the scaler saw
//! (smoothed over its up window) and, for every moment with a horizon of history before it, how
//! many times the rate of a horizon earlier it was. The headroom factor is the request-weighted
//! quantile of those ratios at the SLO's attainment target: holding `factor × load` would have
//! had capacity ready for that share of the past requests. Arrivals, not concurrency: a backlog
//! or answers slowed by overload inflate concurrency well past what the demand was.
//!
//! Which past: the last day, or — where the history shows a daily shape — the same time of
//! day. With two days or more, each past day is held out in turn and the headroom the other
//! days' same hours would have held is checked against what that day's bursts needed; when
//! that held the SLO's attainment, the factor comes from the hours around now's time of day on
//! every past day (and today's last hour), so a fleet whose crowds come at nine holds their
//! headroom around nine only. Times are on a clock whose days start at multiples of 86,400 s
//! (Unix time: UTC days; the fleet simulation: from the workload's start).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

const DAY: f64 = 24.0 * 3600.0;

/// How long the history reaches back: a week of days to find a daily shape in.
pub const HISTORY_SECS: f64 = 7.0 * DAY;

/// The hours around a time of day that stand for it: an hour either side.
const SAME_TIME: f64 = 3600.0;

/// Whether the history shows a daily shape is decided again at most this often (seconds).
const SHAPE_REFRESH: f64 = 3600.0;

/// The history is kept in slots of this many seconds, each a histogram of the ratios seen in
/// it: a day is 96 small histograms, not a ratio per tick (what a state file stores).
const SLOT_SECS: f64 = 900.0;

/// Ratios are bucketed by factors of 1.01; a bucket keeps its weight and its least and largest
/// ratio, and a quantile inside it is read between them by weight (exact where a bucket holds
/// one ratio, within 1 % otherwise).
const BUCKET_BASE: f64 = 1.01;

/// A moment this much (seconds) or a smoothing window older than a horizon ago is across a gap
/// in the history: no rise is measured from it.
const MAX_GAP: f64 = 60.0;

/// The quantile is recomputed at most this often (seconds).
const REFRESH_SECS: f64 = 10.0;

/// The smoothed demand at one moment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Moment {
    t: f64,
    /// Arrivals per second.
    rate: f64,
    /// Requests in flight and queued.
    load: f64,
}

/// The ratios seen in one slot of the history, and the demand's sums over it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Slot {
    start: f64,
    sum_rate: f64,
    sum_load: f64,
    /// By bucket; bucket 0 holds every ratio up to 1 (no rise).
    ratios: BTreeMap<i32, Bucket>,
}

impl Slot {
    fn add_ratio(&mut self, ratio: f64, weight: f64) {
        let bucket = if ratio <= 1.0 {
            0
        } else {
            (ratio.ln() / BUCKET_BASE.ln()).ceil() as i32
        };
        self.ratios
            .entry(bucket)
            .or_insert(Bucket(0.0, ratio, ratio))
            .add(&Bucket(weight, ratio, ratio));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Burstiness {
    /// (time, arrivals, load): raw samples over the smoothing window.
    recent: VecDeque<(f64, u64, f64)>,
    /// The smoothed demand back to a horizon or two (what a rise is measured from).
    smoothed: VecDeque<Moment>,
    /// The history, oldest first.
    slots: VecDeque<Slot>,
    /// Sums of the slots' rates and loads: their ratio turns one replica's load target into
    /// a rate (Little's law), the least a rise is measured from.
    sum_rate: f64,
    sum_load: f64,
    /// The load one replica is sized for: a pool holds at least one, so a rise from near
    /// nothing is a rise from one replica's worth.
    floor_load: f64,
    smoothing: f64,
    /// The last quantile: when, at which attainment, and the factor.
    #[serde(skip)]
    cached: Option<(f64, f64, f64)>,
    /// The last decision on a daily shape: when, at which attainment, and whether it held.
    #[serde(skip)]
    shape: Option<(f64, f64, bool)>,
    /// The past days the last factor's same hours came from (None: from the last day).
    #[serde(skip)]
    same_hours_of: Option<u32>,
}

impl Burstiness {
    /// `floor_load`: the load one replica is sized for; `smoothing`: the window the demand is
    /// averaged over (seconds), as the scaler averages its load.
    pub fn new(floor_load: f64, smoothing: f64) -> Self {
        Self {
            recent: VecDeque::new(),
            smoothed: VecDeque::new(),
            slots: VecDeque::new(),
            sum_rate: 0.0,
            sum_load: 0.0,
            floor_load,
            smoothing: smoothing.max(f64::MIN_POSITIVE),
            cached: None,
            shape: None,
            same_hours_of: None,
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
        // A rise is measured from a moment about a horizon ago, not from one before a gap in
        // the history (a restart read it back from a state file hours later).
        let base = self
            .at_or_before(now - horizon)
            .filter(|m| m.t >= now - horizon - self.smoothing.max(MAX_GAP));
        let floor = self.floor_load * self.sum_rate / self.sum_load.max(f64::MIN_POSITIVE);
        let slot = self.slot_at(now);
        if let Some(base) = base
            && moment.rate > 0.0
        {
            slot.add_ratio(moment.rate / base.rate.max(floor), moment.rate);
        }
        slot.sum_rate += moment.rate;
        slot.sum_load += moment.load;
        self.sum_rate += moment.rate;
        self.sum_load += moment.load;
        self.smoothed.push_back(moment);
        // A rise is measured from a horizon earlier: keep two (the horizon follows the
        // learned cold start, which may grow).
        while self.smoothed.len() > 1 && self.smoothed[1].t <= now - 2.0 * horizon {
            self.smoothed.pop_front();
        }
        while let Some(old) = self
            .slots
            .front()
            .filter(|s| s.start + SLOT_SECS <= now - HISTORY_SECS)
        {
            self.sum_rate -= old.sum_rate;
            self.sum_load -= old.sum_load;
            self.slots.pop_front();
        }
    }

    /// The slot `now` falls in (a new one once the last is over).
    fn slot_at(&mut self, now: f64) -> &mut Slot {
        let start = (now / SLOT_SECS).floor() * SLOT_SECS;
        if self.slots.back().is_none_or(|s| s.start < start) {
            self.slots.push_back(Slot {
                start,
                ..Default::default()
            });
        }
        self.slots.back_mut().expect("a slot was just made")
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
        let days = self.days(now);
        self.same_hours_of = self.daily_shape(now, attainment).then_some(days);
        let factor = if self.same_hours_of.is_some() {
            let same_time = (1..=days).flat_map(|k| self.around(now - f64::from(k) * DAY));
            let today = self.between(now - SAME_TIME, now);
            quantile(same_time, attainment).max(quantile(today, attainment))
        } else {
            quantile(self.between(now - DAY, now), attainment)
        };
        self.cached = Some((now, attainment, factor));
        factor
    }

    /// The past days whose same hours the last factor came from, when the history showed a
    /// daily shape (None: the last day's bursts).
    pub fn same_hours_of(&self) -> Option<u32> {
        self.same_hours_of
    }

    /// Whether the same hours of the other past days call for the headroom each past day's
    /// bursts needed: held out in turn, each day's ratios are checked against the quantile of
    /// the other days' same hours, and against the quantile of the other days whole (the
    /// last-day rule's counterpart). The shape holds when the same hours cover `attainment` of
    /// the ratios, or as many as the whole days do, less half the misses the target allows —
    /// where crowds keep no hour, the same hours miss them and cover fewer. Decided again every
    /// [`SHAPE_REFRESH`]; false before two days of history.
    fn daily_shape(&mut self, now: f64, attainment: f64) -> bool {
        if let Some((at, of, holds)) = self.shape
            && now - at < SHAPE_REFRESH
            && of == attainment
        {
            return holds;
        }
        let days = self.days(now);
        let day_of = |k: u32| self.between(now - f64::from(k) * DAY, now - f64::from(k - 1) * DAY);
        let holds = days >= 2 && {
            let (mut by_hour, mut by_day, mut total) = (0.0, 0.0, 0.0);
            for held_out in 1..=days {
                let others = || (1..=days).filter(move |k| *k != held_out);
                let whole = quantile(others().flat_map(day_of), attainment);
                for slot in day_of(held_out) {
                    let same_hours = others().flat_map(|k| {
                        self.around(slot.start + (f64::from(held_out) - f64::from(k)) * DAY)
                    });
                    let held = quantile(same_hours, attainment);
                    for bucket in slot.ratios.values() {
                        total += bucket.0;
                        by_hour += bucket.0 * bucket.share_up_to(held);
                        by_day += bucket.0 * bucket.share_up_to(whole);
                    }
                }
            }
            // Quantiles of a few hours are noisy: half the misses the target allows more.
            let slack = (1.0 - attainment) * total / 2.0;
            total > 0.0 && by_hour >= by_day.min(attainment * total) - slack
        };
        self.shape = Some((now, attainment, holds));
        holds
    }

    /// Whole past days the history holds before `now`.
    fn days(&self, now: f64) -> u32 {
        self.slots
            .front()
            .map_or(0, |s| ((now - s.start) / DAY).floor().max(0.0) as u32)
    }

    /// The slots within [`SAME_TIME`] of `t`.
    fn around(&self, t: f64) -> impl Iterator<Item = &Slot> {
        self.between(t - SAME_TIME, t + SAME_TIME)
    }

    /// The slots that start in `from..to`.
    fn between(&self, from: f64, to: f64) -> impl Iterator<Item = &Slot> {
        let first = self.slots.partition_point(|s| s.start < from);
        self.slots.range(first..).take_while(move |s| s.start < to)
    }
}

/// Ratios' weight, least and largest (serialized as a triple, small in a state file).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bucket(f64, f64, f64);

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        self.0 += other.0;
        self.1 = self.1.min(other.1);
        self.2 = self.2.max(other.2);
    }

    /// The share of the weight at or below `ratio`, taking it as spread evenly between the
    /// least and largest.
    fn share_up_to(&self, ratio: f64) -> f64 {
        if ratio >= self.2 {
            1.0
        } else if ratio < self.1 {
            0.0
        } else {
            (ratio - self.1) / (self.2 - self.1)
        }
    }
}

/// The request-weighted quantile at `attainment` of the ratios in `slots` (at least 1).
fn quantile<'a>(slots: impl Iterator<Item = &'a Slot>, attainment: f64) -> f64 {
    let mut merged: BTreeMap<i32, Bucket> = BTreeMap::new();
    for (key, bucket) in slots.flat_map(|s| &s.ratios) {
        merged
            .entry(*key)
            .or_insert(Bucket(0.0, bucket.1, bucket.2))
            .add(bucket);
    }
    let total: f64 = merged.values().map(|b| b.0).sum();
    let wanted = attainment * total;
    let mut seen = 0.0;
    for Bucket(weight, least, largest) in merged.into_values() {
        if total > 0.0 && seen + weight >= wanted {
            let within = ((wanted - seen) / weight).clamp(0.0, 1.0);
            return (least + (largest - least) * within).max(1.0);
        }
        seen += weight;
    }
    1.0
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

    /// 100 a second for an hour with a 4x crowd for 90 s in the middle.
    fn crowd(t: f64) -> f64 {
        if (1800.0..1890.0).contains(&t) {
            400.0
        } else {
            100.0
        }
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

    #[test]
    fn a_history_read_back_holds_the_same_headroom_and_ages_on() {
        let mut b = learn(crowd, 3600, 120.0);
        let before = b.factor(3600.0, 0.99);
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.len() < 20_000, "{} bytes", text.len());
        let mut restored: Burstiness = serde_json::from_str(&text).unwrap();
        assert_eq!(restored.factor(3600.0, 0.99), before);
        // It goes on learning, and the crowd ages out of the last day a day after it was seen.
        for s in 3601..3700 {
            restored.observe(f64::from(s), 100, 100.0, 120.0);
        }
        assert_eq!(restored.factor(3700.0, 0.99), before);
        let a_day_later = 1890.0 + DAY + SLOT_SECS;
        for s in 0..200 {
            restored.observe(a_day_later + f64::from(s), 100, 100.0, 120.0);
        }
        assert_eq!(restored.factor(a_day_later + 200.0, 0.99), 1.0);
    }

    #[test]
    fn no_rise_is_measured_across_a_gap_in_the_history() {
        // 10 a second, then nothing seen for eight hours (a stopped gateway), then 100: the
        // first horizon after the gap has no base, and then 100 is steady.
        let mut b = learn(|_| 10.0, 600, 60.0);
        let back = 600.0 + 8.0 * 3600.0;
        for s in 0..600 {
            b.observe(back + f64::from(s), 100, 100.0, 60.0);
        }
        assert_eq!(b.factor(back + 600.0, 0.99), 1.0);
    }

    /// Three days at 100 a second, one sample every 2 s with up to ±20 % noise, and a 4x
    /// crowd of ten minutes at `crowd_hour(day)` o'clock each day. Only a crowd's first
    /// horizon is a rise (~0.5 % of a day's requests), so the quantile that sees crowds is
    /// 99.9 %.
    fn three_days(crowd_hour: impl Fn(u32) -> f64) -> Burstiness {
        let mut b = Burstiness::new(10.0, 10.0);
        let mut seed = 7u64;
        for s in (0..3 * 86_400).step_by(2) {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = 0.8 + 0.4 * ((seed >> 33) as f64 / f64::from(u32::MAX));
            let t = f64::from(s);
            let day = s / 86_400;
            let start = f64::from(day) * DAY + crowd_hour(day) * 3600.0;
            let crowd = (start..start + 600.0).contains(&t);
            let rate = if crowd { 400.0 } else { 100.0 };
            b.observe(t, (rate * 2.0 * noise) as u64, rate, 120.0);
        }
        b
    }

    #[test]
    fn a_crowd_at_the_same_hour_every_day_is_headroom_around_that_hour_only() {
        let at = |hour: f64| 2.0 * DAY + hour * 3600.0;
        let mut b = three_days(|_| 9.0);
        assert!(b.daily_shape(at(20.0), 0.999));
        // The last day alone (the morning's crowd in it) would hold 4x all evening; the same
        // hours hold what the noise calls for.
        let last_day = quantile(b.between(at(20.0) - DAY, at(20.0)), 0.999);
        assert!((3.6..=4.4).contains(&last_day), "{last_day}");
        let evening = b.factor(at(20.0), 0.999);
        assert!((1.0..1.3).contains(&evening), "{evening}");
        assert_eq!(b.same_hours_of(), Some(2));
        let mut b = three_days(|_| 9.0);
        let morning = b.factor(at(24.0 + 8.5), 0.999);
        assert!((3.6..=4.4).contains(&morning), "{morning}");
    }

    #[test]
    fn crowds_at_other_hours_each_day_are_no_daily_shape() {
        let mut b = three_days(|day| [9.0, 15.0, 3.0][day as usize]);
        let at = 2.0 * DAY + 20.0 * 3600.0;
        assert!(!b.daily_shape(at, 0.999));
        let f = b.factor(at, 0.999);
        assert!((3.6..=4.4).contains(&f), "the last day's crowd: {f}");
        assert_eq!(b.same_hours_of(), None);
    }

    #[test]
    fn a_days_history_at_one_sample_a_second_stays_small() {
        // Rates that never repeat: every slot's histogram as full as a day makes it. A ratio
        // per tick would be 86,400 of them (~5 MB of JSON).
        let mut b = learn(
            |t| 100.0 + 50.0 * (t / 37.0).sin() + (t % 7.0),
            86_400,
            120.0,
        );
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.len() < 1_000_000, "{} bytes", text.len());
        assert!(b.factor(86_400.0, 0.99) > 1.0);
    }
}
