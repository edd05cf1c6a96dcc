//! The scheduling queue: pods waiting for a try, highest `spec.priority` first and oldest
//! first within a priority (kube's activeQ order), and pods that did not fit, waiting for a
//! backoff to pass. A pod that did not fit is tried again once its backoff (1 s doubling to
//! 10 s, like kube's) has passed and the cluster changed since its last try, or after the
//! longer idle backoff (2 s doubling to 60 s) even if nothing seemed to change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub type PodKey = String;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MAX_IDLE_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Waiting {
    priority: i32,
    attempts: u32,
    last_attempt: Instant,
    /// The cluster's change counter at the last attempt.
    epoch: u64,
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

    fn due(&self, now: Instant, epoch: u64) -> bool {
        let since = now.saturating_duration_since(self.last_attempt);
        (epoch > self.epoch && since >= self.backoff()) || since >= self.idle_backoff()
    }
}

type Order = (Reverse<i32>, u64);

#[derive(Debug, Default)]
pub struct SchedulingQueue {
    active: BTreeMap<Order, PodKey>,
    in_active: HashMap<PodKey, Order>,
    waiting: HashMap<PodKey, Waiting>,
    /// Attempts so far of pods that went back to the active queue (kept for their backoff).
    attempts: HashMap<PodKey, u32>,
    seq: u64,
    epoch: u64,
}

impl SchedulingQueue {
    /// A pod that needs a node. No-op when it is queued or backing off already.
    pub fn add(&mut self, key: &str, priority: i32) {
        if self.in_active.contains_key(key) || self.waiting.contains_key(key) {
            return;
        }
        self.push(key.to_string(), priority);
    }

    fn push(&mut self, key: PodKey, priority: i32) {
        self.seq += 1;
        let order = (Reverse(priority), self.seq);
        self.in_active.insert(key.clone(), order);
        self.active.insert(order, key);
    }

    /// Up to `n` pods to try now, in queue order.
    pub fn pop(&mut self, n: usize) -> Vec<(PodKey, i32)> {
        let mut batch = Vec::with_capacity(n.min(self.active.len()));
        while batch.len() < n {
            let Some(((Reverse(priority), _), key)) = self.active.pop_first() else {
                break;
            };
            self.in_active.remove(&key);
            batch.push((key, priority));
        }
        batch
    }

    /// The pod did not fit (or its binding failed): back off before the next try.
    pub fn unschedulable(&mut self, key: &str, priority: i32, now: Instant) {
        let attempts = self.attempts.remove(key).unwrap_or(0) + 1;
        if let Some(order) = self.in_active.remove(key) {
            self.active.remove(&order);
        }
        let waiting = Waiting {
            priority,
            attempts,
            last_attempt: now,
            epoch: self.epoch,
        };
        self.waiting.insert(key.to_string(), waiting);
    }

    /// The pod is bound, deleted or not ours any more.
    pub fn forget(&mut self, key: &str) {
        if let Some(order) = self.in_active.remove(key) {
            self.active.remove(&order);
        }
        self.waiting.remove(key);
        self.attempts.remove(key);
    }

    /// Something that could make waiting pods fit happened (a node appeared or changed, a
    /// pod went away).
    pub fn cluster_changed(&mut self) {
        self.epoch += 1;
    }

    /// Moves the waiting pods whose time has come to the active queue; returns how many.
    pub fn flush(&mut self, now: Instant) -> usize {
        let epoch = self.epoch;
        let due: Vec<PodKey> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due(now, epoch))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            if let Some(w) = self.waiting.remove(k) {
                self.attempts.insert(k.clone(), w.attempts);
                self.push(k.clone(), w.priority);
            }
        }
        due.len()
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(batch: Vec<(PodKey, i32)>) -> Vec<PodKey> {
        batch.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn priority_then_fifo_without_duplicates() {
        let mut q = SchedulingQueue::default();
        q.add("a", 0);
        q.add("b", 0);
        q.add("a", 0);
        q.add("urgent", 1000);
        q.add("c", 0);
        assert_eq!(keys(q.pop(2)), vec!["urgent", "a"]);
        assert_eq!(keys(q.pop(10)), vec!["b", "c"]);
        assert!(q.pop(10).is_empty());
    }

    #[test]
    fn backoff_and_cluster_changes() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add("p", 0);
        q.pop(1);
        q.unschedulable("p", 0, t0);
        q.add("p", 0);
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
        assert_eq!(keys(q.pop(1)), vec!["p"]);
        // second failure: backoff 2 s, idle 4 s; the earlier change does not count again
        let t1 = t0 + Duration::from_secs(2);
        q.unschedulable("p", 0, t1);
        assert_eq!(q.flush(t1 + Duration::from_secs(3)), 0);
        assert_eq!(q.flush(t1 + Duration::from_secs(4)), 1);
        q.forget("p");
        assert_eq!(q.active_len(), 0);
        assert_eq!(q.waiting_len(), 0);
    }
}
