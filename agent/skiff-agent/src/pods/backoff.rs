//! CrashLoopBackOff as kubelet paces it: the first restart after 10 s, doubling up to
//! 5 min, and forgotten once a container has run for 10 min without exiting.

use serde::{Deserialize, Serialize};

pub const INITIAL_SECS: u64 = 10;
pub const MAX_SECS: u64 = 300;
pub const RESET_AFTER_SECS: u64 = 600;

/// Restart pacing of one container, in unix seconds so that it survives an agent restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The delay the next crash will wait; 0 until the first crash.
    pub delay_secs: u64,
    /// When the container may start again.
    pub not_before: u64,
}

impl Backoff {
    /// The container exited at `exited_at` after starting at `started_at`: schedule its
    /// restart and return the delay chosen.
    pub fn crashed(&mut self, started_at: u64, exited_at: u64) -> u64 {
        let ran = exited_at.saturating_sub(started_at);
        self.delay_secs = if self.delay_secs == 0 || ran >= RESET_AFTER_SECS {
            INITIAL_SECS
        } else {
            (self.delay_secs * 2).min(MAX_SECS)
        };
        self.not_before = exited_at + self.delay_secs;
        self.delay_secs
    }

    pub fn waiting(&self, now: u64) -> bool {
        now < self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let mut b = Backoff::default();
        let mut t = 1_000;
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(b.crashed(t, t + 1));
            assert!(b.waiting(t + 1));
            assert!(!b.waiting(t + 1 + b.delay_secs));
            t += 1 + b.delay_secs;
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn ten_minutes_of_running_resets_it() {
        let mut b = Backoff::default();
        b.crashed(0, 5);
        b.crashed(20, 25);
        assert_eq!(b.delay_secs, 20);
        assert_eq!(b.crashed(100, 100 + RESET_AFTER_SECS), INITIAL_SECS);
    }
}
