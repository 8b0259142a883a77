//! Canary rollouts with automatic promotion and rollback (`versions[].rollout`): the canary's
//! weight rises step by step; each step is judged on the live traffic of the step alone,
//! canary beside stable — the share of the canary's answers that failed, and its TTFT p90
//! against the stable's. A failing step rolls the canary back at once (weight 0); after the
//! last step it is promoted (all traffic). An operator may promote or abort at any time
//! (`/admin/actions`, chat). Every step and verdict, with its numbers, is logged, told to chat
//! and shown in `/admin/status`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{EventKind, Rollout};
use crate::metrics::{Metrics, quantile};
use crate::notify::{Event, Notifier};
use crate::pool::models::VersionSplit;

/// How often a step's numbers are looked at.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

/// A rollout's plan, where it stands, and an operator's word.
#[derive(Debug)]
pub struct RolloutControl {
    pub plan: Rollout,
    state: Mutex<Progress>,
    /// 0: none; [`PROMOTE`] or [`ABORT`].
    asked: AtomicU8,
}

const PROMOTE: u8 = 1;
const ABORT: u8 = 2;

#[derive(Debug, Clone, Default, Serialize)]
struct Progress {
    /// "step 2 of 3", "promoted", "rolled back".
    state: String,
    canary_weight: u32,
    verdicts: Vec<String>,
}

impl RolloutControl {
    pub fn new(plan: Rollout) -> Self {
        Self {
            plan,
            state: Mutex::new(Progress {
                state: "starting".into(),
                ..Default::default()
            }),
            asked: AtomicU8::new(0),
        }
    }

    /// For `/admin/status`.
    pub fn status(&self) -> serde_json::Value {
        let progress = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::json!(progress)
    }

    /// An operator's promotion (true) or abort (false); false if it is already over.
    pub fn ask(&self, promote: bool) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.state == "promoted" || state.state == "rolled back" {
            return false;
        }
        self.asked
            .store(if promote { PROMOTE } else { ABORT }, Ordering::Relaxed);
        true
    }

    fn update(&self, state: String, weight: u32, verdict: Option<String>) {
        let mut progress = self.state.lock().unwrap_or_else(|e| e.into_inner());
        progress.state = state;
        progress.canary_weight = weight;
        progress.verdicts.extend(verdict);
    }
}

/// What a step saw of one version since it began: its answers, how many failed, and its
/// streamed TTFT p90 (read off the latency histogram's buckets, [`quantile`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    pub answers: u64,
    pub failed: u64,
    pub ttft_p90: Option<f64>,
}

/// A step's end, as [`Walk::look`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum StepEnd {
    /// The step held for its whole duration; the next one begins (its index and the canary's
    /// weight), or after the last the canary is promoted (None).
    Passed {
        text: String,
        next: Option<(usize, u32)>,
    },
    /// The canary failed the step: it is rolled back.
    Failed { text: String },
}

/// Where a rollout stands, on its caller's clock (the gateway's, or the fleet simulation's
/// virtual time): the one rule both follow.
#[derive(Debug, Clone)]
pub struct Walk {
    step: usize,
    /// When the step began.
    began: Duration,
}

impl Walk {
    /// The first step, begun at `now`.
    pub fn start(now: Duration) -> Self {
        Self {
            step: 0,
            began: now,
        }
    }

    /// The step running (0-based).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Judges the step at `now` on what each version saw since it began: failed as soon as
    /// the canary's error rate or its TTFT p90 against the stable's passes the plan's bound
    /// (once it has `min_requests` answers: until then nothing is judged and the step goes
    /// on); passed once it has held for the step's duration. None while it runs.
    pub fn look(
        &mut self,
        plan: &Rollout,
        now: Duration,
        canary: StepStats,
        stable: StepStats,
    ) -> Option<StepEnd> {
        let (_, duration) = plan.steps[self.step];
        if canary.answers < plan.min_requests {
            return None;
        }
        let error_rate = canary.failed as f64 / canary.answers as f64;
        let ratio = match (canary.ttft_p90, stable.ttft_p90) {
            (Some(c), Some(s)) if s > 0.0 => Some(c / s),
            _ => None,
        };
        let numbers = format!(
            "{} answers, {:.1} % failed (max {:.1} %), TTFT p90 {}",
            canary.answers,
            error_rate * 100.0,
            plan.max_error_rate * 100.0,
            match (canary.ttft_p90, stable.ttft_p90, ratio) {
                (Some(c), Some(s), Some(r)) => format!(
                    "{:.0} ms vs stable {:.0} ms ({r:.2}x, max {:.2}x)",
                    c * 1e3,
                    s * 1e3,
                    plan.max_ttft_ratio
                ),
                _ => "not compared (no streams on both)".into(),
            }
        );
        let k = self.step + 1;
        if error_rate > plan.max_error_rate || ratio.is_some_and(|r| r > plan.max_ttft_ratio) {
            return Some(StepEnd::Failed {
                text: format!("step {k} failed: {numbers}: rolled back"),
            });
        }
        if now.saturating_sub(self.began) < duration {
            return None;
        }
        self.step += 1;
        self.began = now;
        let next = plan.steps.get(self.step).map(|&(w, _)| (self.step, w));
        Some(StepEnd::Passed {
            text: format!("step {k} passed: {numbers}"),
            next,
        })
    }
}

/// The announcement of a step.
pub fn step_text(plan: &Rollout, step: usize, canary: &str) -> String {
    format!(
        "step {} of {}: {canary} at {} %",
        step + 1,
        plan.steps.len(),
        plan.steps[step].0
    )
}

/// The weights of a two-version split with the canary at `canary_weight`.
pub fn weights(plan: &Rollout, canary_weight: u32) -> [u32; 2] {
    let mut weights = [0, 0];
    weights[plan.canary] = canary_weight;
    weights[1 - plan.canary] = 100 - canary_weight;
    weights
}

/// What a version's metrics read now (a later reading minus an earlier one is a step's).
struct Reading {
    answers: (u64, u64),
    ttft: Vec<u64>,
}

impl Reading {
    fn now(metrics: &Metrics, pool: &str, model: &str) -> Self {
        Self {
            answers: metrics.answers(pool, model),
            ttft: metrics.ttft_counts(pool),
        }
    }

    /// What happened from `start` to `self`.
    fn since(&self, start: &Reading) -> StepStats {
        let ok = self.answers.0 - start.answers.0;
        let failed = self.answers.1 - start.answers.1;
        let ttft: Vec<u64> = self
            .ttft
            .iter()
            .zip(&start.ttft)
            .map(|(a, b)| a - b)
            .collect();
        StepStats {
            answers: ok + failed,
            failed,
            ttft_p90: quantile(&ttft, 0.9),
        }
    }
}

/// Runs the rollout of `model`'s `split` until it is promoted or rolled back.
pub fn spawn(
    model: String,
    split: Arc<VersionSplit>,
    control: Arc<RolloutControl>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let plan = control.plan.clone();
        let (canary_pool, stable_pool) = (
            split.versions[plan.canary].name.clone(),
            split.versions[1 - plan.canary].name.clone(),
        );
        let tell = |text: String| {
            tracing::info!(model = %model, "rollout: {text}");
            notifier.send(Event::new(
                EventKind::Rollout,
                None,
                format!("{model}: {text}"),
            ));
            text
        };
        let set = |canary_weight: u32| split.set_weights(&weights(&plan, canary_weight));
        let n = plan.steps.len();
        let epoch = Instant::now();
        let mut walk = Walk::start(Duration::ZERO);
        let begin = |k: usize| {
            set(plan.steps[k].0);
            let text = tell(step_text(&plan, k, &canary_pool));
            control.update(
                format!("step {} of {n}", k + 1),
                plan.steps[k].0,
                Some(text),
            );
            (
                Reading::now(&metrics, &canary_pool, &model),
                Reading::now(&metrics, &stable_pool, &model),
            )
        };
        let (mut c0, mut s0) = begin(0);
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            match control.asked.swap(0, Ordering::Relaxed) {
                PROMOTE => {
                    return promote(&control, &set, tell("promoted by an operator".into()));
                }
                ABORT => {
                    return roll_back(
                        &control,
                        &set,
                        tell("aborted by an operator: rolled back".into()),
                    );
                }
                _ => {}
            }
            let canary = Reading::now(&metrics, &canary_pool, &model).since(&c0);
            let stable = Reading::now(&metrics, &stable_pool, &model).since(&s0);
            match walk.look(&plan, epoch.elapsed(), canary, stable) {
                None => {}
                Some(StepEnd::Failed { text }) => return roll_back(&control, &set, tell(text)),
                Some(StepEnd::Passed { text, next }) => {
                    let k = walk.step();
                    control.update(
                        format!("step {k} of {n}"),
                        plan.steps[k - 1].0,
                        Some(tell(text)),
                    );
                    if next.is_none() {
                        let text = tell(format!("{canary_pool} promoted: every step passed"));
                        return promote(&control, &set, text);
                    }
                    (c0, s0) = begin(k);
                }
            }
        }
    })
}

fn promote(control: &RolloutControl, set: &impl Fn(u32), text: String) {
    set(100);
    control.update("promoted".into(), 100, Some(text));
}

fn roll_back(control: &RolloutControl, set: &impl Fn(u32), text: String) {
    set(0);
    control.update("rolled back".into(), 0, Some(text));
}
