//! Deduplicates concurrent work by key (BuildKit's flightcontrol): while a computation for a
//! key runs, later callers wait for its result instead of starting their own. Results are not
//! kept after the flight lands; caching is the caller's business.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub struct Singleflight<K, V> {
    flights: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Singleflight<K, V> {
    fn default() -> Self {
        Singleflight {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Singleflight<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` for `key` unless a flight for it is already running, in which case this
    /// waits for that flight's value. If the caller running the flight is cancelled, a waiting
    /// caller takes over with its own `work`.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights
                .entry(key.clone())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let value = cell.get_or_init(work).await.clone();
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            flights.remove(&key);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run() {
        let sf = Arc::new(Singleflight::<&str, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (sf, runs) = (sf.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k", || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 100
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 100);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The flight is gone once it landed: the next call runs again.
        let again = sf.run("k", || async { 7 }).await;
        assert_eq!(again, 7);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() {
        let sf = Arc::new(Singleflight::<u8, u8>::new());
        let leader = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.run(1, std::future::pending::<u8>).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.run(1, || async { 9 }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        assert_eq!(follower.await.unwrap(), 9);
    }
}
