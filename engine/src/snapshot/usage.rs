//! What the garbage collector must not remove: snapshots held by live work.
//!
//! Two kinds of protection, both in memory and both checked by the collector inside
//! [`Usage::exclusive`], under the same lock that taking them needs:
//!
//! * **Pins** ([`Usage::pin`]): counted, released on drop. Views, prepared snapshots (their
//!   parent) and exec roots hold one for as long as they exist, so a mounted or copied tree never
//!   loses its lower layers.
//! * **Stamps** ([`Usage::touch`]): "an operation obtained this id". Solver results live in
//!   memory between the steps of a query (a memoised container names its rootfs, a cache hit
//!   names a snapshot before anything mounts it); a stamp made while operations run protects the
//!   id until every operation that was running at that moment has finished.
//!
//! Taking either and then checking that the row still exists ("touch, then verify") is race-free:
//! the collector's check-and-delete runs under the lock, so either the stamp came first and the
//! collector skips the id, or the row is already gone and the caller sees it missing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

/// Called, under the registry lock, with the ids the collector just removed. Listeners must not
/// call back into the registry.
type Listener = Box<dyn Fn(&HashSet<String>) + Send + Sync>;

#[derive(Default)]
struct State {
    pins: HashMap<String, usize>,
    /// When an id was last obtained: monotonic (protection) and wall clock (last-used times).
    stamps: HashMap<String, (Instant, SystemTime)>,
    /// Start times of running operations, by a sequence number.
    ops: HashMap<u64, Instant>,
    next_op: u64,
    listeners: Vec<Listener>,
}

impl State {
    fn oldest_op(&self) -> Option<Instant> {
        self.ops.values().min().copied()
    }
}

/// The process-wide registry of snapshots in use. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct Usage {
    state: Arc<Mutex<State>>,
    finished: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage").finish_non_exhaustive()
    }
}

/// Keeps a snapshot in use until dropped.
#[must_use = "the snapshot is in use only while the pin lives"]
pub struct Pin {
    usage: Usage,
    id: String,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pin").field(&self.id).finish()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = self.usage.lock();
        if let Some(n) = s.pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                s.pins.remove(&self.id);
            }
        }
    }
}

/// A running operation (one GraphQL request). Stamps made while it runs stay protective until
/// it ends.
#[must_use = "the operation counts as running only while the guard lives"]
pub struct Operation {
    usage: Usage,
    seq: u64,
}

impl Drop for Operation {
    fn drop(&mut self) {
        self.usage.lock().ops.remove(&self.seq);
        self.usage.finished.notify_one();
    }
}

/// The protections in force at one moment (see [`Usage::exclusive`]).
pub struct InUse<'a> {
    state: &'a State,
    oldest_op: Option<Instant>,
}

impl InUse<'_> {
    /// Whether `id` is pinned, or was obtained while a still-running operation ran.
    pub fn contains(&self, id: &str) -> bool {
        if self.state.pins.contains_key(id) {
            return true;
        }
        match (self.oldest_op, self.state.stamps.get(id)) {
            (Some(oldest), Some((at, _))) => *at >= oldest,
            _ => false,
        }
    }

    /// Every protected id.
    pub fn ids(&self) -> HashSet<String> {
        let mut out: HashSet<String> = self.state.pins.keys().cloned().collect();
        if let Some(oldest) = self.oldest_op {
            out.extend(
                self.state
                    .stamps
                    .iter()
                    .filter(|(_, (at, _))| *at >= oldest)
                    .map(|(id, _)| id.clone()),
            );
        }
        out
    }
}

impl Usage {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `id` until the returned guard is dropped.
    pub fn pin(&self, id: &str) -> Pin {
        *self.lock().pins.entry(id.to_string()).or_default() += 1;
        Pin {
            usage: self.clone(),
            id: id.to_string(),
        }
    }

    /// Records that the ids were just obtained (and used).
    pub fn touch<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = (Instant::now(), SystemTime::now());
        let mut s = self.lock();
        for id in ids {
            s.stamps.insert(id.to_string(), now);
        }
    }

    /// Marks the start of an operation; it ends when the guard is dropped.
    pub fn begin_operation(&self) -> Operation {
        let mut s = self.lock();
        let seq = s.next_op;
        s.next_op += 1;
        s.ops.insert(seq, Instant::now());
        Operation {
            usage: self.clone(),
            seq,
        }
    }

    /// Woken when an operation ends (one stored wake-up if nobody is waiting).
    pub fn finished_notify(&self) -> Arc<tokio::sync::Notify> {
        self.finished.clone()
    }

    pub fn running_operations(&self) -> usize {
        self.lock().ops.len()
    }

    /// Registers `f` to hear about removed snapshots (see [`Listener`]).
    pub fn on_removed(&self, f: impl Fn(&HashSet<String>) + Send + Sync + 'static) {
        self.lock().listeners.push(Box::new(f));
    }

    /// Protected ids right now (a planning hint: recheck inside [`Usage::exclusive`]).
    pub fn protected_ids(&self) -> HashSet<String> {
        let s = self.lock();
        InUse {
            oldest_op: s.oldest_op(),
            state: &s,
        }
        .ids()
    }

    /// Runs the collector's check-and-delete with every pin, stamp and operation frozen. `f`
    /// returns its value and the ids it removed; listeners hear about those before the lock is
    /// released, so nothing can obtain a removed id from a listener's cache afterwards.
    pub fn exclusive<T>(&self, f: impl FnOnce(&InUse<'_>) -> (T, HashSet<String>)) -> T {
        let s = self.lock();
        let (value, removed) = f(&InUse {
            oldest_op: s.oldest_op(),
            state: &s,
        });
        if !removed.is_empty() {
            for l in &s.listeners {
                l(&removed);
            }
        }
        value
    }

    /// Last-used times recorded since the previous call, for persisting. Stamps that no longer
    /// protect anything are dropped; the rest stay (and are returned again next time).
    pub fn drain_last_used(&self) -> Vec<(String, SystemTime)> {
        let mut s = self.lock();
        let out = s
            .stamps
            .iter()
            .map(|(id, (_, wall))| (id.clone(), *wall))
            .collect();
        match s.oldest_op() {
            Some(oldest) => s.stamps.retain(|_, (at, _)| *at >= oldest),
            None => s.stamps.clear(),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_count_and_release() {
        let u = Usage::new();
        let a = u.pin("a");
        let b = u.pin("a");
        assert!(u.protected_ids().contains("a"));
        drop(a);
        assert!(u.protected_ids().contains("a"));
        drop(b);
        assert!(!u.protected_ids().contains("a"));
    }

    #[test]
    fn stamps_protect_only_while_an_operation_that_saw_them_runs() {
        let u = Usage::new();
        u.touch(["idle"]);
        assert!(u.protected_ids().is_empty(), "no operation: no protection");
        let op = u.begin_operation();
        u.touch(["during"]);
        let ids = u.protected_ids();
        assert!(ids.contains("during") && !ids.contains("idle"), "{ids:?}");
        // A later operation does not extend protection to what an earlier, finished one saw.
        let later = u.begin_operation();
        drop(op);
        assert!(!u.protected_ids().contains("during"));
        drop(later);
    }

    #[test]
    fn exclusive_tells_listeners_what_was_removed() {
        let u = Usage::new();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        u.on_removed(move |ids| h.lock().unwrap().extend(ids.iter().cloned()));
        let _pin = u.pin("kept");
        let removed = u.exclusive(|in_use| {
            let gone: HashSet<String> = ["kept", "gone"]
                .into_iter()
                .filter(|id| !in_use.contains(id))
                .map(String::from)
                .collect();
            (gone.len(), gone)
        });
        assert_eq!(removed, 1);
        assert_eq!(*heard.lock().unwrap(), vec!["gone".to_string()]);
    }

    #[test]
    fn drain_keeps_protective_stamps() {
        let u = Usage::new();
        u.touch(["old"]);
        let _op = u.begin_operation();
        u.touch(["new"]);
        let mut drained: Vec<String> = u.drain_last_used().into_iter().map(|(i, _)| i).collect();
        drained.sort();
        assert_eq!(drained, ["new", "old"]);
        let again: Vec<String> = u.drain_last_used().into_iter().map(|(i, _)| i).collect();
        assert_eq!(again, ["new"]);
    }
}
