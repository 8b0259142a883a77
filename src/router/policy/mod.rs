//! The routing policies, one file each. Every policy is a pure function of the pool's snapshot,
//! the request's features and the pick context, and takes `eligible`: whether a replica index
//! may be picked (not ejected, not already tried for this request). Session affinity lives with
//! its hash ring in [`super::session`].

mod least_inflight;
mod power_of_two;
mod predicted_ttft;
mod prefix_affinity;
mod round_robin;
mod weighted;

pub use least_inflight::least_inflight;
pub use power_of_two::power_of_two;
pub use predicted_ttft::{predicted_ttft, predicted_ttft_secs};
pub use prefix_affinity::prefix_affinity;
pub use round_robin::round_robin;
pub use weighted::weighted;
