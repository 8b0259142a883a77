//! Session affinity: a consistent-hash ring (`pingora-ketama`) over a pool's replicas, built
//! once per snapshot. A session key maps to the same replica while it is routable; when it is
//! ejected, excluded or saturated the next replica on the ring takes the session, and adding or
//! removing a replica moves only about 1/n of the sessions.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

use pingora_ketama::{Bucket, Continuum};

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
