//! How a recommendation becomes action, as pure functions shared by the local provider and the
//! fleet simulation: how many replicas to add or remove, and which ones leave first. Replicas
//! are removed only once none is starting (a replica that is loading may be the one the load
//! needs), and the ones with the fewest answers in flight drain first.

/// What to do about the replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Hold,
    /// Start this many replicas.
    Add(u32),
    /// Drain and stop this many.
    Remove(u32),
}

/// The step from `ready` + `starting` replicas towards `desired`.
pub fn step(desired: u32, ready: u32, starting: u32) -> Step {
    let capacity = ready + starting;
    if desired > capacity {
        Step::Add(desired - capacity)
    } else if desired < capacity && starting == 0 {
        Step::Remove(capacity - desired)
    } else {
        Step::Hold
    }
}

/// The step towards `desired` with, for a removal, which of the ready replicas (their
/// in-flight counts, in the caller's order) leave: [`step`] then [`victims`].
pub fn plan(desired: u32, ready: u32, starting: u32, inflight: &[u64]) -> Plan {
    match step(desired, ready, starting) {
        Step::Hold => Plan::Hold,
        Step::Add(n) => Plan::Add(n),
        Step::Remove(n) => Plan::Drain(victims(inflight, n)),
    }
}

/// A [`Step`] with its victims chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Hold,
    /// Start this many replicas.
    Add(u32),
    /// Drain these (positions into the caller's list of ready replicas), then stop them.
    Drain(Vec<usize>),
}

/// Which `n` of the candidates (their in-flight counts, in the caller's order) leave: fewest in
/// flight first, the earlier one on a tie. Positions into `inflight`, in leaving order.
pub fn victims(inflight: &[u64], n: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..inflight.len()).collect();
    order.sort_by_key(|&i| inflight[i]); // stable: ties keep the caller's order
    order.truncate(n as usize);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_what_is_missing_remove_only_when_nothing_starts() {
        assert_eq!(step(5, 2, 1), Step::Add(2));
        assert_eq!(step(3, 2, 1), Step::Hold);
        assert_eq!(step(1, 2, 1), Step::Hold, "one is still starting");
        assert_eq!(step(1, 3, 0), Step::Remove(2));
        assert_eq!(step(0, 0, 0), Step::Hold);
    }

    #[test]
    fn the_least_busy_leave_first_ties_in_order() {
        assert_eq!(victims(&[4, 0, 2, 0, 1], 3), vec![1, 3, 4]);
        assert_eq!(victims(&[1, 1], 5), vec![0, 1], "no more than there are");
        assert!(victims(&[3], 0).is_empty());
        assert_eq!(plan(1, 3, 0, &[2, 0, 1]), Plan::Drain(vec![1, 2]));
        assert_eq!(plan(1, 3, 1, &[2, 0, 1]), Plan::Hold);
        assert_eq!(plan(4, 3, 0, &[2, 0, 1]), Plan::Add(1));
    }
}
