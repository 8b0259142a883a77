//! Parity of `serve` and `simulate`: the same events driven through the gateway's admission
//! path ([`PoolState::admit`] and its queue, on real threads and timers) and the fleet
//! simulation's (arrival, admission, release), and the same scale-down through the local
//! provider's plan and the simulation's actuation, must give the same decisions — the ones
//! written out by hand below. A rule changed on one side only fails here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};

use super::{FleetSpec, RunSpec, State};
use crate::config::{self, Config};
use crate::fleet_sim::stats::{Failure, Slo};
use crate::fleet_sim::workload::Request;
use crate::pool::PoolState;
use crate::pool::queue::Refused;
use crate::replica::InflightGuard;
use crate::router::Snapshot;
use crate::scaler::actuation::Plan;
use crate::scaler::local::LocalProvider;
use crate::scaler::policy::Observation;

/// What became of a request, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Go(usize),
    Queued(usize),
    Released(usize),
    Shed(usize),
    Full(usize),
}

/// A script step: a request arrives with a priority header, or one in flight ends.
#[derive(Debug, Clone, Copy)]
enum Step {
    Arrive(usize, &'static str),
    Finish(usize),
}

fn config() -> Config {
    let mut config = config::embedded_default();
    let pool = &mut config.pools[0];
    pool.scaler.enabled = false;
    pool.admission.max_inflight_per_replica = 2;
    pool.admission.max_queue = 3;
    pool.admission.max_queue_wait = Duration::from_secs(600);
    config.pools.truncate(1);
    config
}

/// One replica that takes two at a time and a queue of three: two go, a sheddable one is
/// shed, three wait (one of them critical, named untidily), the next is refused; each answer
/// that ends lets one in, the critical one first.
const SCRIPT: [Step; 10] = [
    Step::Arrive(0, "standard"),
    Step::Arrive(1, "standard"),
    Step::Arrive(2, "sheddable"),
    Step::Arrive(3, "standard"),
    Step::Arrive(4, " Critical "),
    Step::Arrive(5, "standard"),
    Step::Arrive(6, "standard"),
    Step::Finish(0),
    Step::Finish(1),
    Step::Finish(4),
];

const EXPECTED: [Decision; 10] = [
    Decision::Go(0),
    Decision::Go(1),
    Decision::Shed(2),
    Decision::Queued(3),
    Decision::Queued(4),
    Decision::Queued(5),
    Decision::Full(6),
    Decision::Released(4),
    Decision::Released(3),
    Decision::Released(5),
];

/// The script through the gateway's path: each request a task calling [`PoolState::admit`]
/// as the proxy does, holding an in-flight guard once let in; an answer ending drops its guard
/// and wakes the queue, as the proxied body does.
fn gateway_decisions(config: &Config) -> Vec<Decision> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let metrics = crate::metrics::Metrics::new();
        let pool_config = config.pools[0].clone();
        let gauges = metrics.pool_gauges(&pool_config.name);
        let classes = config.classification.clone();
        let pool = Arc::new(PoolState::new(
            pool_config,
            gauges,
            Instant::now(),
            classes.priority_classes.len(),
        ));
        let replica = pool.add_replica(Scheme::HTTP, Authority::from_static("127.0.0.1:9"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let guards: Arc<Mutex<HashMap<usize, InflightGuard>>> = Arc::default();
        // Lets every task run until it waits.
        let settle = || tokio::time::sleep(Duration::from_millis(30));
        for step in SCRIPT {
            match step {
                Step::Arrive(i, priority) => {
                    let class = classes.priority_of(Some(priority));
                    let sheddable = classes.is_sheddable(class);
                    let task_log = log.clone();
                    let (pool, replica, guards) = (pool.clone(), replica.clone(), guards.clone());
                    tokio::spawn(async move {
                        let (outcome, held) = pool.admit(class, sheddable, Instant::now()).await;
                        let decision = match (outcome, held) {
                            (Ok(()), None) => Decision::Go(i),
                            (Ok(()), Some(_)) => Decision::Released(i),
                            (Err(Refused::Shed), _) => Decision::Shed(i),
                            (Err(Refused::Full), _) => Decision::Full(i),
                            (Err(Refused::Timeout), _) => panic!("request {i} timed out"),
                        };
                        if outcome.is_ok() {
                            guards.lock().unwrap().insert(i, replica.start_request());
                        }
                        task_log.lock().unwrap().push(decision);
                    });
                    settle().await;
                    let mut log = log.lock().unwrap();
                    let decided = log.iter().any(|d| {
                        matches!(d, Decision::Go(j) | Decision::Shed(j) | Decision::Full(j) if *j == i)
                    });
                    if !decided {
                        log.push(Decision::Queued(i));
                    }
                }
                Step::Finish(i) => {
                    drop(guards.lock().unwrap().remove(&i).expect("in flight"));
                    pool.queue.wake();
                    settle().await;
                }
            }
        }
        log.lock().unwrap().clone()
    })
}

fn fleet_spec(initial: u32) -> FleetSpec {
    FleetSpec {
        profiles: vec![crate::vllm_sim::profile::profile("llama-8b-h100").unwrap()],
        fail_rates: vec![0.0],
        initial: vec![initial],
        slow_fraction: 0.0,
        slow_factor: 1.0,
        unscraped_fraction: 0.0,
        cold_start: Some(30.0),
        scaler_phase: None,
        slo: Slo {
            ttft: 1.0,
            itl: 0.1,
        },
        seed: 1,
        sample_every: 10.0,
        tail: 60.0,
        keep_requests: true,
        gateways: 1,
        sync_interval: None,
    }
}

fn as_configured() -> RunSpec {
    RunSpec {
        name: "parity".into(),
        routing: None,
        scaler: None,
    }
}

/// The script through the fleet simulation's path: arrivals as its event loop hands them
/// over, and each ending as an engine's last token does (guard dropped, queue released).
fn simulation_decisions(config: &Config) -> Vec<Decision> {
    let workload: Vec<Request> = SCRIPT
        .iter()
        .filter_map(|step| match step {
            Step::Arrive(i, priority) => Some(Request {
                arrival: *i as f64 * 0.001,
                model: None,
                prompt_tokens: 64,
                output_tokens: 16,
                segments: Vec::new(),
                session: None,
                priority: Some(priority.to_string()),
            }),
            Step::Finish(_) => None,
        })
        .collect();
    let spec = fleet_spec(1);
    let run = as_configured();
    let mut fleet = super::Fleet::new(config, &spec, &run, &workload);
    let mut log = Vec::new();
    for step in SCRIPT {
        match step {
            Step::Arrive(i, _) => {
                fleet.now = workload[i].arrival;
                fleet.arrived += 1;
                fleet.active += 1;
                fleet.arrive(i);
                log.push(match fleet.records[i].failure {
                    Some(Failure::Shed) => Decision::Shed(i),
                    Some(Failure::QueueFull) => Decision::Full(i),
                    Some(other) => panic!("request {i} failed: {other:?}"),
                    None if fleet.running[i].is_some() => Decision::Go(i),
                    None => Decision::Queued(i),
                });
            }
            Step::Finish(i) => {
                let waiting: Vec<usize> = (0..workload.len())
                    .filter(|&j| fleet.features[j].is_some() && fleet.running[j].is_none())
                    .collect();
                let running = fleet.running[i].take().expect("in flight");
                drop(running.guard);
                fleet.active -= 1;
                fleet.release_queue(0);
                log.extend(
                    waiting
                        .into_iter()
                        .filter(|&j| fleet.running[j].is_some())
                        .map(Decision::Released),
                );
            }
        }
    }
    log
}

#[test]
fn admission_decides_alike_in_the_gateway_and_the_simulation() {
    let config = config();
    let gateway = gateway_decisions(&config);
    let simulation = simulation_decisions(&config);
    assert_eq!(gateway, EXPECTED, "the gateway's path");
    assert_eq!(simulation, EXPECTED, "the simulation's path");
}

#[test]
fn scaling_down_drains_alike_in_the_local_provider_and_the_simulation() {
    let mut config = config();
    config.pools[0].scaler.enabled = true;
    let spec = fleet_spec(4);
    let run = as_configured();
    let mut fleet = super::Fleet::new(&config, &spec, &run, &[]);
    // In flight per replica: 2, 0, 1, 0.
    let replicas: Vec<_> = fleet.pools[0]
        .replicas
        .iter()
        .map(|r| r.views[0].clone())
        .collect();
    let _held: Vec<InflightGuard> = [0, 0, 2]
        .iter()
        .map(|&r| replicas[r].start_request())
        .collect();
    let running: Vec<Authority> = replicas.iter().map(|r| r.authority.clone()).collect();
    let snapshot = Snapshot::new(replicas.clone());
    let observation = |ready: u32, starting: u32| Observation {
        ready,
        starting,
        ..Default::default()
    };
    let names = |positions: &[usize]| -> Vec<String> {
        positions
            .iter()
            .map(|&i| replicas[i].name.clone())
            .collect()
    };

    // One starting: nothing leaves, on either side.
    let held = observation(4, 1);
    assert_eq!(
        LocalProvider::plan(&running, &snapshot, 2, &held),
        Plan::Hold
    );
    fleet.actuate(0, 2, &held);
    assert!(
        fleet.pools[0]
            .replicas
            .iter()
            .all(|r| r.state == State::Ready),
        "the simulation drained while a replica started"
    );

    // Down to 2: the two idle replicas (1 and 3) drain, on both sides.
    let obs = observation(4, 0);
    let Plan::Drain(local) = LocalProvider::plan(&running, &snapshot, 2, &obs) else {
        panic!("the local provider does not scale down");
    };
    fleet.actuate(0, 2, &obs);
    let simulated: Vec<usize> = (0..4)
        .filter(|&r| fleet.pools[0].replicas[r].state != State::Ready)
        .collect();
    let mut local_sorted = local.clone();
    local_sorted.sort_unstable();
    assert_eq!(names(&local_sorted), names(&[1, 3]), "the local provider");
    assert_eq!(names(&simulated), names(&[1, 3]), "the simulation");

    // Up to 5 from the 2 left: three start on both sides.
    let obs = observation(2, 0);
    let running_left: Vec<Authority> = [0, 2].iter().map(|&i| running[i].clone()).collect();
    assert_eq!(
        LocalProvider::plan(&running_left, &snapshot, 5, &obs),
        Plan::Add(3)
    );
    let before = fleet.pools[0].replicas.len();
    fleet.actuate(0, 5, &obs);
    assert_eq!(fleet.pools[0].replicas.len() - before, 3);
    assert_eq!(fleet.pools[0].starting, 3);
}
