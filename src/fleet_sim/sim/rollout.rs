//! Canary rollouts in virtual time: the gateway's rule ([`Walk`]) judges each step every
//! [`LOOK_EVERY`] on what each version answered since the step began, and moves the weights
//! of the split the arrivals draw their version from. Every step and verdict is kept for the
//! report, with its virtual time. Operators' promote and abort exist only in `serve`.

use std::sync::Arc;
use std::time::Duration;

use super::{Ev, Fleet};
use crate::config::Rollout;
use crate::fleet_sim::stats::RolloutEvent;
use crate::metrics::{latency_counts, quantile};
use crate::pool::models::VersionSplit;
use crate::rollout::{LOOK_EVERY, StepEnd, StepStats, Walk, step_text, weights};

/// One pool's answers so far (what `infergate_requests_total` and the TTFT histogram count).
#[derive(Debug, Default, Clone)]
pub(super) struct Tally {
    pub answers: u64,
    pub failed: u64,
    /// Each streamed answer's time to first token, in order.
    pub ttft: Vec<f64>,
}

/// Where a tally stood when a step began.
#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    answers: u64,
    failed: u64,
    ttfts: usize,
}

impl Tally {
    fn mark(&self) -> Mark {
        Mark {
            answers: self.answers,
            failed: self.failed,
            ttfts: self.ttft.len(),
        }
    }

    fn since(&self, mark: Mark) -> StepStats {
        StepStats {
            answers: self.answers - mark.answers,
            failed: self.failed - mark.failed,
            ttft_p90: quantile(&latency_counts(&self.ttft[mark.ttfts..]), 0.9),
        }
    }
}

/// A running rollout of one split.
pub(super) struct SimRollout {
    model: String,
    split: Arc<VersionSplit>,
    plan: Rollout,
    walk: Walk,
    /// Pool index of the canary and of the stable version, and their tallies at the step's
    /// start.
    canary: usize,
    stable: usize,
    marks: (Mark, Mark),
    /// The canary's weight now.
    pub weight: u32,
}

impl Fleet<'_> {
    /// Starts the rollouts the config plans, at time 0.
    pub(super) fn start_rollouts(&mut self) {
        for versions in &self.config.versions {
            let Some(plan) = versions.rollout.clone() else {
                continue;
            };
            let Some((_, route)) = self.models.lookup(&versions.model) else {
                continue;
            };
            let Some(split) = route.split.clone() else {
                continue;
            };
            let (canary, stable) = (
                split.versions[plan.canary].pool,
                split.versions[1 - plan.canary].pool,
            );
            let at = self.rollouts.len();
            self.rollouts.push(SimRollout {
                model: versions.model.clone(),
                split,
                plan,
                walk: Walk::start(Duration::ZERO),
                canary,
                stable,
                marks: Default::default(),
                weight: 0,
            });
            self.begin_step(at, 0);
            self.at(LOOK_EVERY.as_secs_f64(), Ev::RolloutLook(at));
        }
    }

    fn begin_step(&mut self, at: usize, step: usize) {
        let rollout = &mut self.rollouts[at];
        let weight = rollout.plan.steps[step].0;
        let text = step_text(
            &rollout.plan,
            step,
            &rollout.split.versions[rollout.plan.canary].name,
        );
        rollout.marks = (
            self.tallies[rollout.canary].mark(),
            self.tallies[rollout.stable].mark(),
        );
        self.set_canary_weight(at, weight, text);
    }

    fn set_canary_weight(&mut self, at: usize, weight: u32, text: String) {
        let rollout = &mut self.rollouts[at];
        rollout.split.set_weights(&weights(&rollout.plan, weight));
        rollout.weight = weight;
        self.rollout_events.push(RolloutEvent {
            t: self.now,
            model: rollout.model.clone(),
            canary_weight: weight,
            text,
        });
    }

    /// A look at a rollout's step; the next one is due unless the rollout ended.
    pub(super) fn look_at_rollout(&mut self, at: usize) {
        let rollout = &mut self.rollouts[at];
        let canary = self.tallies[rollout.canary].since(rollout.marks.0);
        let stable = self.tallies[rollout.stable].since(rollout.marks.1);
        let now = Duration::from_secs_f64(self.now);
        match rollout.walk.look(&rollout.plan, now, canary, stable) {
            None => {}
            Some(StepEnd::Failed { text }) => return self.set_canary_weight(at, 0, text),
            Some(StepEnd::Passed { text, next }) => {
                let weight = rollout.weight;
                let canary_name = rollout.split.versions[rollout.plan.canary].name.clone();
                self.set_canary_weight(at, weight, text);
                match next {
                    Some((step, _)) => self.begin_step(at, step),
                    None => {
                        let text = format!("{canary_name} promoted: every step passed");
                        return self.set_canary_weight(at, 100, text);
                    }
                }
            }
        }
        self.at(self.now + LOOK_EVERY.as_secs_f64(), Ev::RolloutLook(at));
    }

    /// The canary weight of the first rollout, for the timeline.
    pub(super) fn canary_weight(&self) -> Option<u32> {
        self.rollouts.first().map(|r| r.weight)
    }
}
