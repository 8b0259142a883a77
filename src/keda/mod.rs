//! KEDA's external scaler (`externalscaler.proto`, gRPC over h2c on `listeners.keda`): a team
//! that actuates with KEDA ScaledObjects (or HPA external metrics through KEDA) gets infergate's
//! scaling decision and load view per pool while KEDA changes the replica count. The pool is the
//! ScaledObject's `scalerMetadata.pool` (default: the ScaledObject's name).
//!
//! - `GetMetricSpec` names one metric, `infergate-<pool>`, with a target of 1 per replica;
//!   `GetMetrics` gives the replicas infergate's scaler wants now (its recommendation, from the
//!   load every gateway sees). As an `AverageValue` metric (KEDA's default) HPA then sets
//!   exactly that many replicas. The pool's own scaler should not act too: give it
//!   `provider: static`, which recommends without acting.
//! - `IsActive` / `StreamIsActive`: whether the pool has work or wants replicas (its scaler
//!   wants one or more, or requests are in flight or held at the gateway), so KEDA scales a
//!   pool from zero when a request arrives and to zero when infergate would.
//!
//! `externalscaler.rs` is generated from the proto by tonic-build 0.13 (`build_server(true)`,
//! `build_client(true)`, `build_transport(false)`) and committed, so that building needs no
//! `protoc`; regenerate it with that configuration when the proto changes.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::pool::PoolState;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod externalscaler;
pub use externalscaler::*;

use external_scaler_server::{ExternalScaler, ExternalScalerServer};

/// How often a `StreamIsActive` stream looks whether the answer changed.
const STREAM_EVERY: Duration = Duration::from_secs(1);

/// The gRPC service over the pools' live state.
#[derive(Clone)]
pub struct Scaler {
    pools: Arc<[Arc<PoolState>]>,
}

impl Scaler {
    pub fn service(pools: Vec<Arc<PoolState>>) -> ExternalScalerServer<Scaler> {
        ExternalScalerServer::new(Scaler {
            pools: pools.into(),
        })
    }

    /// The pool a ScaledObject means, or NOT_FOUND naming the pools there are.
    #[allow(clippy::result_large_err)] // tonic's Status: what every RPC answers with
    fn pool(&self, object: &ScaledObjectRef) -> Result<Arc<PoolState>, Status> {
        let name = object
            .scaler_metadata
            .get("pool")
            .unwrap_or(&object.name)
            .as_str();
        let mut live = self.pools.iter();
        live.find(|p| p.name() == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.pools.iter().map(|p| p.name()).collect();
            let shown: String = name.chars().take(64).collect();
            Status::not_found(format!(
                "no pool named `{shown}` (scalerMetadata.pool, else the ScaledObject's name); pools: {}",
                names.join(", ")
            ))
        })
    }
}

/// Replicas the pool's scaler wants now: its last decision, else the replicas known.
fn desired(pool: &PoolState) -> u32 {
    pool.scaler_status
        .load()
        .as_deref()
        .map_or(pool.snapshot().replicas.len() as u32, |s| s.desired)
}

/// Whether the pool has work or wants replicas.
fn active(pool: &PoolState) -> bool {
    let inflight: u64 = pool
        .snapshot()
        .replicas
        .iter()
        .map(|r| r.cluster_inflight())
        .sum();
    desired(pool) > 0 || inflight > 0 || pool.queued() > 0
}

fn metric_name(pool: &PoolState) -> String {
    format!("infergate-{}", pool.name())
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let pool = self.pool(request.get_ref())?;
        Ok(Response::new(IsActiveResponse {
            result: active(&pool),
        }))
    }

    type StreamIsActiveStream =
        tokio_stream::wrappers::ReceiverStream<Result<IsActiveResponse, Status>>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let pool = self.pool(request.get_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The current answer at once, then each change; ends when KEDA hangs up.
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = active(&pool);
                if last != Some(now) {
                    if tx.send(Ok(IsActiveResponse { result: now })).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(STREAM_EVERY) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let pool = self.pool(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: metric_name(&pool),
                target_size: 1,
                target_size_float: 1.0,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let object = request
            .scaled_object_ref
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        let pool = self.pool(&object)?;
        let value = desired(&pool);
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: metric_name(&pool),
                metric_value: i64::from(value),
                metric_value_float: f64::from(value),
            }],
        }))
    }
}
