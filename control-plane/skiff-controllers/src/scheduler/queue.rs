//! The scheduling queue: pods waiting for a first try (FIFO), and pods that did not fit,
//! waiting for a backoff to pass. A pod that did not fit is tried again once its backoff
//! (1 s doubling to 10 s, like kube's) has passed and the cluster changed since its last
//! try, or after the longer idle backoff (2 s doubling to 60 s) even if nothing seemed to
//! change.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

pub type PodKey = String;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MAX_IDLE_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Waiting {
    attempts: u32,
    last_attempt: Instant,
    cluster_changed: bool,
}

impl Waiting {
    fn backoff(&self) -> Duration {
        let shift = self.attempts.saturating_sub(1).min(16);
        (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
    }

    fn idle_backoff(&self) -> Duration {
        let shift = self.attempts.min(16);
        (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_IDLE_BACKOFF)
    }

    fn due(&self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last_attempt);
        (self.cluster_changed && since >= self.backoff()) || since >= self.idle_backoff()
    }
}

#[derive(Debug, Default)]
pub struct SchedulingQueue {
    active: VecDeque<PodKey>,
    in_active: HashSet<PodKey>,
    waiting: HashMap<PodKey, Waiting>,
    /// Attempts so far of pods that went back to the active queue (kept for their backoff).
    attempts: HashMap<PodKey, u32>,
}

impl SchedulingQueue {
    /// A pod that needs a node. No-op when it is queued or backing off already.
    pub fn add(&mut self, key: &str) {
        if self.in_active.contains(key) || self.waiting.contains_key(key) {
            return;
        }
        self.in_active.insert(key.to_string());
        self.active.push_back(key.to_string());
    }

    /// Up to `n` pods to try now, oldest first.
    pub fn pop(&mut self, n: usize) -> Vec<PodKey> {
        let take = n.min(self.active.len());
        let batch: Vec<PodKey> = self.active.drain(..take).collect();
        for k in &batch {
            self.in_active.remove(k);
        }
        batch
    }

    /// The pod did not fit (or its binding failed): back off before the next try.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        let attempts = self.attempts.remove(key).unwrap_or(0) + 1;
        self.in_active.remove(key);
        self.waiting.insert(
            key.to_string(),
            Waiting {
                attempts,
                last_attempt: now,
                cluster_changed: false,
            },
        );
    }

    /// The pod is bound, deleted or not ours any more.
    pub fn forget(&mut self, key: &str) {
        if self.in_active.remove(key) {
            self.active.retain(|k| k != key);
        }
        self.waiting.remove(key);
        self.attempts.remove(key);
    }

    /// Something that could make waiting pods fit happened (a node appeared or changed, a
    /// pod went away).
    pub fn cluster_changed(&mut self) {
        for w in self.waiting.values_mut() {
            w.cluster_changed = true;
        }
    }

    /// Moves the waiting pods whose time has come to the active queue; returns how many.
    pub fn flush(&mut self, now: Instant) -> usize {
        let due: Vec<PodKey> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            if let Some(w) = self.waiting.remove(k) {
                self.attempts.insert(k.clone(), w.attempts);
            }
            self.in_active.insert(k.clone());
            self.active.push_back(k.clone());
        }
        due.len()
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_waiting(&self, key: &str) -> bool {
        self.waiting.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_without_duplicates() {
        let mut q = SchedulingQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.pop(10), vec!["a", "b"]);
        assert!(q.pop(10).is_empty());
    }

    #[test]
    fn backoff_and_cluster_changes() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add("p");
        q.pop(1);
        q.unschedulable("p", t0);
        q.add("p");
        assert_eq!(
            q.active_len(),
            0,
            "a backing-off pod is not re-added by updates"
        );
        assert_eq!(
            q.flush(t0 + Duration::from_millis(1500)),
            0,
            "nothing changed: idle backoff (2 s)"
        );
        q.cluster_changed();
        assert_eq!(
            q.flush(t0 + Duration::from_millis(500)),
            0,
            "still within the 1 s backoff"
        );
        assert_eq!(q.flush(t0 + Duration::from_millis(1000)), 1);
        assert_eq!(q.pop(1), vec!["p"]);
        // second failure: backoff 2 s, idle 4 s
        let t1 = t0 + Duration::from_secs(2);
        q.unschedulable("p", t1);
        assert_eq!(q.flush(t1 + Duration::from_secs(3)), 0);
        assert_eq!(q.flush(t1 + Duration::from_secs(4)), 1);
        q.forget("p");
        assert_eq!(q.active_len(), 0);
        assert_eq!(q.waiting_len(), 0);
    }
}
