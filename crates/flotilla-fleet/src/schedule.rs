//! Scheduling: concurrency slots shared by every session of the daemon,
//! handed out fairly between fleets.
//!
//! A model request takes a slot of its endpoint (a local GPU server answers
//! only so many requests at once) and one of the machine (the daemon's
//! requests in flight); a fleet worker holds one of its fleet's slots
//! (`max_workers`) for as long as its loop runs. A slot without a limit is
//! free. When slots are short, requests queue; each freed slot goes to the
//! waiter whose fleet holds the fewest request slots now (ties: the one
//! that waited longest), so a fleet of a hundred workers cannot starve a
//! lone session or a smaller fleet on the same GPU.
//!
//! Written here rather than with `tokio::sync::Semaphore`: a semaphore is
//! first come, first served on one resource, and this needs several
//! resources taken together and a choice of the next waiter by fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_models::{ChatRequest, ChatResponse, ModelClient, ModelError};
use flotilla_protocol::SessionId;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// A limited resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// Model requests in flight from this daemon.
    Machine,
    /// Model requests in flight to one endpoint (normalized URL).
    Endpoint(String),
    /// Running workers of one fleet (by its root).
    Fleet(SessionId),
}

impl Slot {
    /// Whether it counts toward a fleet's share (model request slots do;
    /// a fleet's own worker slots are its alone).
    fn shared(&self) -> bool {
        !matches!(self, Slot::Fleet(_))
    }
}

/// How many of each slot there are; slots not named are unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Model requests in flight from this daemon at once.
    pub machine_slots: Option<usize>,
    /// Model requests in flight at once, by endpoint URL.
    pub endpoint_slots: HashMap<String, usize>,
}

struct Waiter {
    id: u64,
    fleet: SessionId,
    slots: Vec<Slot>,
    tx: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    limits: HashMap<Slot, usize>,
    used: HashMap<Slot, usize>,
    /// Shared slots held, by fleet.
    held: HashMap<SessionId, usize>,
    waiters: Vec<Waiter>,
    next: u64,
}

impl State {
    fn fits(&self, slots: &[Slot]) -> bool {
        slots.iter().all(|s| {
            let used = self.used.get(s).copied().unwrap_or(0);
            self.limits.get(s).is_none_or(|max| used < *max)
        })
    }

    fn take(&mut self, fleet: &SessionId, slots: &[Slot]) {
        for s in slots {
            *self.used.entry(s.clone()).or_default() += 1;
        }
        if slots.iter().any(Slot::shared) {
            *self.held.entry(fleet.clone()).or_default() += 1;
        }
    }

    fn give_back(&mut self, fleet: &SessionId, slots: &[Slot]) {
        for s in slots {
            if let Some(n) = self.used.get_mut(s) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.used.remove(s);
                }
            }
        }
        if slots.iter().any(Slot::shared) {
            if let Some(n) = self.held.get_mut(fleet) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.held.remove(fleet);
                }
            }
        }
    }

    /// Grants every waiter that fits, fairest first.
    fn dispatch(&mut self) {
        loop {
            let next = self
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| self.fits(&w.slots))
                .min_by_key(|(_, w)| (self.held.get(&w.fleet).copied().unwrap_or(0), w.id))
                .map(|(i, _)| i);
            let Some(i) = next else { return };
            let w = self.waiters.remove(i);
            self.take(&w.fleet, &w.slots);
            if w.tx.send(()).is_err() {
                // Its waiter is gone (and did not see the grant).
                self.give_back(&w.fleet, &w.slots);
            }
        }
    }
}

/// The daemon's slots.
#[derive(Default)]
pub struct Scheduler {
    state: Mutex<State>,
}

/// Held slots, given back when dropped.
pub(crate) struct Permit {
    sched: Arc<Scheduler>,
    fleet: SessionId,
    slots: Vec<Slot>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        let mut st = self.sched.lock();
        st.give_back(&self.fleet, &self.slots);
        st.dispatch();
    }
}

/// A queued request: if dropped before its grant arrives (its session was
/// cancelled), it leaves the queue, or gives back a grant it never took.
struct Waiting<'a> {
    sched: &'a Arc<Scheduler>,
    id: u64,
    fleet: SessionId,
    slots: Vec<Slot>,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut st = self.sched.lock();
        if let Some(i) = st.waiters.iter().position(|w| w.id == self.id) {
            st.waiters.remove(i);
        } else {
            st.give_back(&self.fleet, &self.slots);
        }
        st.dispatch();
    }
}

impl Scheduler {
    /// The slots of `config`.
    pub fn new(config: &SchedulerConfig) -> Arc<Scheduler> {
        let mut limits = HashMap::new();
        if let Some(n) = config.machine_slots {
            limits.insert(Slot::Machine, n.max(1));
        }
        for (url, n) in &config.endpoint_slots {
            limits.insert(Slot::Endpoint(normalize(url)), (*n).max(1));
        }
        Arc::new(Scheduler {
            state: Mutex::new(State {
                limits,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (every
        // change is made under the lock without calls out).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a slot's limit once nobody holds or waits for it (a fleet
    /// that ended).
    pub(crate) fn clear_limit(&self, slot: &Slot) {
        let mut st = self.lock();
        let waited = st.waiters.iter().any(|w| w.slots.contains(slot));
        if st.used.get(slot).copied().unwrap_or(0) == 0 && !waited {
            st.limits.remove(slot);
        }
    }

    /// Waits for one `slot`, of which there are `max`: the limit is set
    /// and the request queued at once, so a `clear_limit` cannot come
    /// between them.
    pub(crate) async fn acquire_limited(
        self: &Arc<Self>,
        fleet: &SessionId,
        slot: Slot,
        max: usize,
    ) -> Permit {
        self.acquire_with(fleet, vec![slot.clone()], Some((slot, max)))
            .await
    }

    /// Waits for one of each of `slots` (those with a limit) on behalf of
    /// `fleet`, in the fair queue.
    pub(crate) async fn acquire(self: &Arc<Self>, fleet: &SessionId, slots: Vec<Slot>) -> Permit {
        self.acquire_with(fleet, slots, None).await
    }

    async fn acquire_with(
        self: &Arc<Self>,
        fleet: &SessionId,
        slots: Vec<Slot>,
        limit: Option<(Slot, usize)>,
    ) -> Permit {
        let rx = {
            let mut st = self.lock();
            if let Some((slot, max)) = limit {
                st.limits.insert(slot, max.max(1));
            }
            let slots: Vec<Slot> = slots
                .into_iter()
                .filter(|s| st.limits.contains_key(s))
                .collect();
            if slots.is_empty() {
                return Permit {
                    sched: self.clone(),
                    fleet: fleet.clone(),
                    slots,
                };
            }
            let id = st.next;
            st.next += 1;
            let (tx, rx) = oneshot::channel();
            st.waiters.push(Waiter {
                id,
                fleet: fleet.clone(),
                slots: slots.clone(),
                tx,
            });
            st.dispatch();
            (rx, id, slots)
        };
        let (rx, id, slots) = rx;
        let mut waiting = Waiting {
            sched: self,
            id,
            fleet: fleet.clone(),
            slots,
            granted: false,
        };
        // The sender is only dropped after a send or with the waiter
        // removed by `Waiting` itself; either way the slots are ours now.
        let _ = rx.await;
        waiting.granted = true;
        Permit {
            sched: self.clone(),
            fleet: fleet.clone(),
            slots: std::mem::take(&mut waiting.slots),
        }
    }

    /// Requests waiting now (for tests and `ps`).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().waiters.len()
    }
}

/// An endpoint URL as slots are keyed: no trailing slash, lower-case
/// scheme and host.
pub(crate) fn normalize(url: &str) -> String {
    crate::normalize_endpoint(url)
}

/// A session's model client, each request of which waits for its slots.
pub(crate) struct Scheduled {
    pub(crate) inner: Arc<dyn ModelClient>,
    pub(crate) sched: Arc<Scheduler>,
    /// The fleet (its root), or the session itself when it is in none.
    pub(crate) fleet: SessionId,
    pub(crate) slots: Vec<Slot>,
}

impl ModelClient for Scheduled {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let _permit = self.sched.acquire(&self.fleet, self.slots.clone()).await;
            self.inner.chat(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sid() -> SessionId {
        SessionId::generate()
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_fleet_holding_fewest() {
        let sched = Scheduler::new(&SchedulerConfig {
            machine_slots: Some(2),
            ..SchedulerConfig::default()
        });
        let (big, small) = (sid(), sid());
        let a1 = sched.acquire(&big, vec![Slot::Machine]).await;
        let _a2 = sched.acquire(&big, vec![Slot::Machine]).await;
        // The big fleet queues three more, then the small one asks.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, fleet) in [(1, &big), (2, &big), (3, &big), (4, &small)] {
            let (s, f, tx) = (sched.clone(), fleet.clone(), tx.clone());
            tokio::spawn(async move {
                let p = s.acquire(&f, vec![Slot::Machine]).await;
                tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(p);
            });
            // Queued in this order.
            while sched.queued() < i {
                tokio::task::yield_now().await;
            }
        }
        drop(a1);
        // Though it asked last, the small fleet holds nothing: it goes first.
        assert_eq!(rx.recv().await, Some(4));
        assert_eq!(sched.queued(), 3);
    }

    #[tokio::test]
    async fn slots_are_taken_together_and_given_back_on_cancel() {
        let ep = "http://127.0.0.1:9/v1".to_owned();
        let sched = Scheduler::new(&SchedulerConfig {
            machine_slots: Some(4),
            endpoint_slots: HashMap::from([(format!("{ep}/"), 1)]),
        });
        let f = sid();
        let both = vec![Slot::Machine, Slot::Endpoint(normalize(&ep))];
        let held = sched.acquire(&f, both.clone()).await;
        // A second request to the endpoint waits; dropped while waiting,
        // it leaves the queue and takes nothing.
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), sched.acquire(&f, both.clone())).await;
        assert!(waiting.is_err());
        assert_eq!(sched.queued(), 0);
        // Other endpoints are not held up by it.
        let other = tokio::time::timeout(
            Duration::from_millis(50),
            sched.acquire(&f, vec![Slot::Machine, Slot::Endpoint("http://x".into())]),
        )
        .await;
        assert!(other.is_ok());
        drop(other);
        drop(held);
        let again = tokio::time::timeout(Duration::from_millis(50), sched.acquire(&f, both)).await;
        assert!(again.is_ok(), "the endpoint's slot came back");
        let st = sched.lock();
        assert_eq!(st.used.get(&Slot::Machine), Some(&1));
    }

    #[tokio::test]
    async fn unlimited_slots_never_wait() {
        let sched = Scheduler::new(&SchedulerConfig::default());
        let f = sid();
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(sched.acquire(&f, vec![Slot::Machine]).await);
        }
        assert_eq!(sched.queued(), 0);
    }
}
