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
const LOOK_EVERY: Duration = Duration::from_millis(500);

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

/// What a step saw of one version since it began.
struct Since {
    answers: (u64, u64),
    ttft: Vec<u64>,
}

impl Since {
    fn now(metrics: &Metrics, pool: &str, model: &str) -> Self {
        Self {
            answers: metrics.answers(pool, model),
            ttft: metrics.ttft_counts(pool),
        }
    }

    /// (answers, failed, TTFT p90) from `start` to `self`.
    fn minus(&self, start: &Since) -> (u64, u64, Option<f64>) {
        let ok = self.answers.0 - start.answers.0;
        let failed = self.answers.1 - start.answers.1;
        let ttft: Vec<u64> = self
            .ttft
            .iter()
            .zip(&start.ttft)
            .map(|(a, b)| a - b)
            .collect();
        (ok + failed, failed, quantile(&ttft, 0.9))
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
        let canary = plan.canary;
        let stable = 1 - canary;
        let (canary_pool, stable_pool) = (
            split.versions[canary].name.clone(),
            split.versions[stable].name.clone(),
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
        let set = |canary_weight: u32| {
            let mut weights = [0, 0];
            weights[canary] = canary_weight;
            weights[stable] = 100 - canary_weight;
            split.set_weights(&weights);
        };
        let n = plan.steps.len();
        for (k, &(weight, duration)) in plan.steps.iter().enumerate() {
            set(weight);
            let text = tell(format!(
                "step {} of {n}: {canary_pool} at {weight} %",
                k + 1
            ));
            control.update(format!("step {} of {n}", k + 1), weight, Some(text));
            let began = Instant::now();
            let (c0, s0) = (
                Since::now(&metrics, &canary_pool, &model),
                Since::now(&metrics, &stable_pool, &model),
            );
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
                let (answers, failed, canary_p90) =
                    Since::now(&metrics, &canary_pool, &model).minus(&c0);
                if answers < plan.min_requests {
                    continue; // too little traffic to judge: the step goes on
                }
                let error_rate = failed as f64 / answers as f64;
                let (_, _, stable_p90) = Since::now(&metrics, &stable_pool, &model).minus(&s0);
                let ratio = match (canary_p90, stable_p90) {
                    (Some(c), Some(s)) if s > 0.0 => Some(c / s),
                    _ => None,
                };
                let numbers = format!(
                    "{answers} answers, {:.1} % failed (max {:.1} %), TTFT p90 {}",
                    error_rate * 100.0,
                    plan.max_error_rate * 100.0,
                    match (canary_p90, stable_p90, ratio) {
                        (Some(c), Some(s), Some(r)) => format!(
                            "{:.0} ms vs stable {:.0} ms ({r:.2}x, max {:.2}x)",
                            c * 1e3,
                            s * 1e3,
                            plan.max_ttft_ratio
                        ),
                        _ => "not compared (no streams on both)".into(),
                    }
                );
                if error_rate > plan.max_error_rate
                    || ratio.is_some_and(|r| r > plan.max_ttft_ratio)
                {
                    let text = tell(format!("step {} failed: {numbers}: rolled back", k + 1));
                    return roll_back(&control, &set, text);
                }
                if began.elapsed() >= duration {
                    let text = tell(format!("step {} passed: {numbers}", k + 1));
                    control.update(format!("step {} of {n}", k + 1), weight, Some(text));
                    break;
                }
            }
        }
        promote(
            &control,
            &set,
            tell(format!("{canary_pool} promoted: every step passed")),
        );
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
