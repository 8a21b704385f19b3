//! The admission rule, as Apache's event MPM states it for
//! AsyncRequestWorkerFactor: accept new connections only while
//!
//! ```text
//! connections (not counting lingering closes) < workers + factor × idle workers
//! ```
//!
//! and, on top, while the connection table has a free slot.
//!
//! Computed in floating point so a fractional factor acts as written: with 4
//! workers, 2 idle and factor 1.5 the bound is 7, not 6.

/// What the event thread knows when it decides whether to accept.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Open connections in every state.
    pub open: usize,
    /// Of `open`, those in lingering close: they will never need a worker.
    pub lingering: usize,
    pub workers: usize,
    pub idle_workers: usize,
}

pub fn admits(load: Load, factor: f64, connection_limit: usize) -> bool {
    if load.open >= connection_limit {
        return false;
    }
    if factor.is_infinite() {
        return true; // no rule: only the limit
    }
    let counted = load.open.saturating_sub(load.lingering) as f64;
    counted < load.workers as f64 + factor * load.idle_workers as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(open: usize, lingering: usize, idle: usize) -> Load {
        Load {
            open,
            lingering,
            workers: 4,
            idle_workers: idle,
        }
    }

    #[test]
    fn fractional_factor_is_not_truncated() {
        // 4 + 1.5 * 2 = 7
        assert!(admits(load(6, 0, 2), 1.5, 100));
        assert!(!admits(load(7, 0, 2), 1.5, 100));
        // 4 + 1.5 * 1 = 5.5: 5 admits, 6 does not
        assert!(admits(load(5, 0, 1), 1.5, 100));
        assert!(!admits(load(6, 0, 1), 1.5, 100));
    }

    #[test]
    fn busy_workers_shrink_the_bound_to_the_worker_count() {
        assert!(admits(load(3, 0, 0), 2.0, 100));
        assert!(!admits(load(4, 0, 0), 2.0, 100));
    }

    #[test]
    fn lingering_connections_do_not_count() {
        assert!(!admits(load(10, 0, 0), 2.0, 100));
        assert!(admits(load(10, 7, 0), 2.0, 100));
    }

    #[test]
    fn the_connection_limit_is_hard() {
        assert!(!admits(load(8, 8, 4), 1000.0, 8));
        assert!(admits(load(7, 0, 4), 1000.0, 8));
    }
}
