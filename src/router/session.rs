//! Session affinity: a consistent-hash ring (`pingora-ketama`) over a pool's replicas, built
//! once per snapshot, and the policy that routes on it ([`session_affinity`]). A session key
//! maps to the same replica while it is routable; when it is ejected, excluded or saturated the
//! next replica on the ring takes the session, and adding or removing a replica moves only
//! about 1/n of the sessions.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

use pingora_ketama::{Bucket, Continuum};

use super::{PickContext, Snapshot, saturated};
use crate::replica::Replica;

pub struct SessionRing {
    ring: Continuum,
    /// Ring node → index into the snapshot's replicas.
    index: HashMap<SocketAddr, usize>,
}

impl std::fmt::Debug for SessionRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRing")
            .field("replicas", &self.index.len())
            .finish()
    }
}

/// The ring names nodes by socket address; a replica known by host name gets a stable
/// stand-in address derived from its name.
fn ring_node(replica: &Replica) -> SocketAddr {
    replica.authority.as_str().parse().unwrap_or_else(|_| {
        let h = crate::openai::fnv1a(replica.authority.as_str().as_bytes());
        let segments = [
            0xfd00,
            (h >> 48) as u16,
            (h >> 32) as u16,
            (h >> 16) as u16,
            h as u16,
            0,
            0,
            1,
        ];
        SocketAddr::new(
            Ipv6Addr::from(segments).into(),
            replica.authority.port_u16().unwrap_or(80),
        )
    })
}

impl SessionRing {
    pub fn new(replicas: &[Arc<Replica>]) -> Self {
        let nodes: Vec<SocketAddr> = replicas.iter().map(|r| ring_node(r)).collect();
        let buckets: Vec<Bucket> = nodes.iter().map(|n| Bucket::new(*n, 1)).collect();
        Self {
            ring: Continuum::new(&buckets),
            index: nodes.into_iter().enumerate().map(|(i, n)| (n, i)).collect(),
        }
    }

    /// The session's replica: the first one on the ring from the key's point that `eligible`
    /// accepts.
    pub fn pick(&self, session: u64, eligible: impl Fn(&usize) -> bool) -> Option<usize> {
        // Each replica has 160 points; after that many points every replica has been seen.
        self.ring
            .node_iter(&session.to_le_bytes())
            .take(self.index.len() * 160 + 1)
            .filter_map(|node| self.index.get(node).copied())
            .find(|i| eligible(i))
    }
}

/// The session's replica on the ring; while it is saturated, the next one on the ring that is
/// not (the same one for every request of the session, so its cache stays warm there too); when
/// all are saturated, the session's own (the gateway queue holds requests back before that).
pub fn session_affinity(
    snapshot: &Snapshot,
    session: u64,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    snapshot
        .sessions
        .pick(session, |i| {
            eligible(i)
                && !saturated(
                    &snapshot.replicas[*i],
                    &ctx.limits,
                    ctx.now,
                    ctx.stale_after,
                )
        })
        .or_else(|| snapshot.sessions.pick(session, &eligible))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::config::RoutingPolicy;
    use crate::router::test_support::*;
    use crate::router::{PickContext, RequestFeatures, Snapshot, pick};

    #[test]
    fn session_affinity_is_sticky_and_spreads_sessions() {
        let s = snapshot(4);
        let mut per_replica = [0; 4];
        for session in 0..400u64 {
            let key = session.wrapping_mul(0x9E3779B97F4A7C15);
            let first = pick(
                &routing(RoutingPolicy::SessionAffinity),
                &s,
                &with_session(key),
                ctx(1, 1),
                &[],
            )
            .unwrap();
            // Load does not move a session.
            let _busy = s.replicas[first].start_request();
            for r in 0..5 {
                assert_eq!(
                    pick(
                        &routing(RoutingPolicy::SessionAffinity),
                        &s,
                        &with_session(key),
                        ctx(r, r),
                        &[]
                    ),
                    Some(first)
                );
            }
            per_replica[first] += 1;
        }
        // 100 each on average; the ring's 160 points per replica leave the shares uneven by up to
        // about a fifth, so the slack is the ring's, not the test's.
        assert!(
            per_replica.iter().all(|n| (70..130).contains(n)),
            "{per_replica:?}"
        );
        // Without a session key: least in flight.
        let _a = s.replicas[0].start_request();
        let i = pick(
            &routing(RoutingPolicy::SessionAffinity),
            &Snapshot::new(s.replicas[..2].to_vec()),
            &RequestFeatures::default(),
            ctx(0, 0),
            &[],
        );
        assert_eq!(i, Some(1));
    }

    #[test]
    fn session_affinity_fails_over_and_moves_few_sessions_on_growth() {
        let s = snapshot(4);
        let keys: Vec<u64> = (0..1000u64)
            .map(|k| k.wrapping_mul(0x9E3779B97F4A7C15))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                pick(
                    &routing(RoutingPolicy::SessionAffinity),
                    &s,
                    &with_session(*k),
                    ctx(0, 0),
                    &[],
                )
                .unwrap()
            })
            .collect();
        // Excluding a session's replica sends it elsewhere, the same place each time.
        let k = keys[0];
        let other = pick(
            &routing(RoutingPolicy::SessionAffinity),
            &s,
            &with_session(k),
            ctx(0, 0),
            &[before[0]],
        )
        .unwrap();
        assert_ne!(other, before[0]);
        assert_eq!(
            pick(
                &routing(RoutingPolicy::SessionAffinity),
                &s,
                &with_session(k),
                ctx(9, 9),
                &[before[0]]
            ),
            Some(other)
        );
        // A fifth replica takes about a fifth of the sessions; the rest stay put.
        let grown = snapshot(5);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| {
                pick(
                    &routing(RoutingPolicy::SessionAffinity),
                    &grown,
                    &with_session(**k),
                    ctx(0, 0),
                    &[],
                )
                .unwrap()
                    != **b
            })
            .count();
        // 200 on average; the ring's uneven shares (see above) allow for a quarter either way.
        assert!(
            (150..250).contains(&moved),
            "{moved} of 1000 sessions moved"
        );
    }

    #[test]
    fn session_affinity_leaves_a_saturated_replica_and_comes_back() {
        let s = snapshot(4);
        let now = Instant::now();
        let r = routing(RoutingPolicy::SessionAffinity);
        let c = PickContext { now, ..ctx(0, 0) };
        let f = with_session(0x9E3779B97F4A7C15);
        let home = pick(&r, &s, &f, c, &[]).unwrap();
        let next_on_ring = pick(&r, &s, &f, c, &[home]).unwrap();
        assert_eq!(
            c.limits.max_waiting_per_replica, 32,
            "the default threshold"
        );
        // 33 waiting on the session's replica: saturated, the session goes to the next one on
        // the ring, the same one every time.
        s.replicas[home].record_scrape(stats(33.0, 0.0), now);
        for q in 0..10 {
            assert_eq!(
                pick(&r, &s, &f, PickContext { now, ..ctx(q, q) }, &[]),
                Some(next_on_ring)
            );
        }
        // 32 waiting is not saturated: back home.
        s.replicas[home].record_scrape(stats(32.0, 0.0), now);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(home));
        // Every replica saturated: the session stays home.
        for replica in &s.replicas {
            replica.record_scrape(stats(40.0, 0.0), now);
        }
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(home));
        // Stale stats are unknown, not saturated.
        let later = PickContext {
            now: now + std::time::Duration::from_secs(2),
            ..c
        };
        s.replicas[home].record_scrape(stats(40.0, 0.0), now);
        assert_eq!(pick(&r, &s, &f, later, &[]), Some(home));
    }
}
