//! The gateway: an OpenAI-aware reverse proxy on hyper, the request path only. [`proxy`]
//! handles a request, [`classify`] reads it once, [`pools`] holds each pool's live state with
//! the gateway's plumbing for it (upstream clients, request metrics), [`upstream`] sends to a
//! replica, [`body`] streams answers, [`error`] maps every failure to an OpenAI-style response.
//! [`crate::app`] starts it.

pub mod auth;
pub mod body;
pub mod classify;
pub mod error;
pub mod pools;
pub mod proxy;
pub mod upstream;
pub mod usage;
