//! Which pool of a tier takes a request (one model on several replica profiles, e.g. L4s and
//! H100s): the one whose load is lowest for its capacity now, so that every pool runs at the
//! same share of the capacity its scaler sized it for and the router inside the pool does the
//! rest. One rule for the gateway and the fleet simulation.

/// One pool of the tier as the request sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// Requests in flight to the pool and held in its queue (this gateway's exact counts).
    pub load: u64,
    /// Replicas taking traffic, and replicas starting.
    pub ready: u32,
    pub starting: u32,
    /// The load one replica is sized for (`scaler.targets.concurrency`).
    pub concurrency: f64,
    /// The price of one replica-hour (`scaler.replica_cost_per_hour`).
    pub price: f64,
    /// Whether the request fits its replicas' context (prompt + answer within their
    /// `max_model_len`, when known).
    pub fits: bool,
}

impl Member {
    /// A pool as one gateway sees it at `now`: its replica set (`replicas`), the requests it
    /// holds in its queue (`queued`), the replicas starting, and its scaler's settings; `fits`:
    /// whether the request fits its context.
    pub fn seen(
        replicas: &[std::sync::Arc<crate::replica::Replica>],
        queued: u64,
        starting: u32,
        scaler: &crate::config::Scaler,
        fits: bool,
        now: std::time::Instant,
    ) -> Self {
        Self {
            load: replicas.iter().map(|r| r.inflight()).sum::<u64>() + queued,
            ready: replicas.iter().filter(|r| r.takes_traffic(now)).count() as u32,
            starting,
            concurrency: scaler.targets.concurrency,
            price: scaler.replica_cost_per_hour.unwrap_or(1.0),
            fits,
        }
    }
}

/// The member (its position) that takes the request: among those it fits, the lowest load
/// per unit of ready capacity, counting this request; with none ready, the one whose
/// starting capacity is least loaded (the request waits there for it); with nothing ready or
/// starting, the one with the cheapest replica (the tier's scaler starts that one first for
/// a held request). None when the request fits no member.
pub fn choose(members: &[Member]) -> Option<usize> {
    let per_capacity = |m: &Member, replicas: u32| {
        (m.load + 1) as f64 / (f64::from(replicas) * m.concurrency).max(f64::MIN_POSITIVE)
    };
    let least = |replicas: fn(&Member) -> u32| {
        members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.fits && replicas(m) > 0)
            .min_by(|(_, a), (_, b)| {
                per_capacity(a, replicas(a)).total_cmp(&per_capacity(b, replicas(b)))
            })
            .map(|(i, _)| i)
    };
    least(|m| m.ready)
        .or_else(|| least(|m| m.starting))
        .or_else(|| {
            members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.fits)
                .min_by(|(_, a), (_, b)| a.price.total_cmp(&b.price))
                .map(|(i, _)| i)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(load: u64, ready: u32, concurrency: f64) -> Member {
        Member {
            load,
            ready,
            starting: 0,
            concurrency,
            price: 1.0,
            fits: true,
        }
    }

    #[test]
    fn the_pool_with_the_most_room_for_its_size_takes_the_request() {
        // 2 L4s sized for 8 each hold 10 (0.69 with this one); 1 H100 sized for 64 holds 40 (0.64).
        let tier = [member(10, 2, 8.0), member(40, 1, 64.0)];
        assert_eq!(choose(&tier), Some(1));
        // At 50 on the H100 (0.80) the L4s take it.
        let tier = [member(10, 2, 8.0), member(50, 1, 64.0)];
        assert_eq!(choose(&tier), Some(0));
    }

    #[test]
    fn a_request_too_long_for_a_pool_goes_to_one_it_fits() {
        let mut short_context = member(0, 4, 8.0);
        short_context.fits = false;
        let tier = [short_context, member(60, 1, 64.0)];
        assert_eq!(choose(&tier), Some(1));
        let mut other = member(0, 1, 64.0);
        other.fits = false;
        assert_eq!(choose(&[short_context, other]), None);
    }

    #[test]
    fn with_nothing_ready_the_request_waits_for_what_starts_else_for_the_cheapest() {
        let mut l4 = member(0, 0, 8.0);
        l4.price = 0.8;
        let mut h100 = member(0, 0, 64.0);
        h100.price = 3.5;
        assert_eq!(
            choose(&[h100, l4]),
            Some(1),
            "the cheapest replica starts first"
        );
        h100.starting = 1;
        assert_eq!(
            choose(&[h100, l4]),
            Some(0),
            "it waits where capacity is coming"
        );
        l4.ready = 1;
        l4.load = 20;
        assert_eq!(
            choose(&[h100, l4]),
            Some(1),
            "ready capacity, however busy, first"
        );
    }
}
