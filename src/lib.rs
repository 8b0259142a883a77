//! infergate: a load-aware inference gateway and autoscaler for LLM model servers.
//!
//! [`cli`] parses a command and hands over; [`app`] wires the running parts together. Read
//! along the data flow:
//!
//! - request path: [`gateway`] (read, classify, admit, forward, stream back) → [`router`]
//!   (pick a replica: pure, over a snapshot) → a replica;
//! - live state below them: [`pool`] (a pool's replica set, admission queue and rules, prefix
//!   index, model index) holding [`replica`]s (exact in-flight counts, scraped stats, learned
//!   speed), filled by [`scrape`] (replica pages, DCGM) and [`discovery`] (local processes,
//!   Kubernetes);
//! - control: [`scaler`] (pure policies, observation, actuation; local and Kubernetes
//!   providers), [`peers`] (the load only other gateways know), [`kubernetes`] (client,
//!   leader lease);
//! - beside them: [`config`], [`metrics`], [`admin`] (status, operator actions, slash
//!   commands from chat) and [`notify`] (events to chat), [`http_server`], [`tls`] (the
//!   listener's certificate, verifying `https://` replicas), [`openai`] (wire formats),
//!   [`telemetry`] (logs), [`otel`] (request spans to an OTLP collector);
//! - tools: [`vllm_sim`] (a simulated vLLM replica, `infergate sim`), [`fleet_sim`] (the
//!   fleet simulation, `infergate simulate`), [`loadgen`] (`infergate load` and `loadgen`).

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod fleet_sim;
pub mod gateway;
pub mod http_server;
pub mod keda;
pub mod kubernetes;
pub mod loadgen;
pub mod metrics;
pub mod notify;
pub mod openai;
pub mod otel;
pub mod peers;
pub mod pool;
pub mod replica;
pub mod rollout;
pub mod router;
pub mod scaler;
pub mod scrape;
pub mod telemetry;
pub mod tls;
pub mod vllm_sim;
