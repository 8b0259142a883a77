//! The scaling controller: pure policies in [`policy`], and the control loop that feeds them the
//! gateway's live view of each pool and acts on their recommendations through a provider.

pub mod policy;
