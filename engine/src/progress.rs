//! Progress events: what the engine is doing for a client, as it happens.
//!
//! Solver operations and image pulls report through [`start`] (an [`Op`] that ends as done,
//! cached or failed) and [`cached`]. Events go to the [`Reporter`] installed for the current
//! task with [`scope`]: the server installs the requesting session's reporter around each
//! query, so events reach the client that asked. Work done outside any scope (no session, a
//! plain `POST /query`) reports nowhere and costs nothing.
//!
//! Deduplicated work reports to whoever runs it: when two sessions ask for the same operation
//! at once, the one whose request starts the shared flight sees its events; the other simply
//! waits for the value. Tasks spawned by the engine do not inherit the scope; code that spawns
//! work on behalf of a request passes [`current`] along and re-enters it with [`scope`].
//!
//! This module sits below everything that reports and depends on nothing in the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an operation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Started,
    /// Bytes (or items) done so far, of `total` when known.
    Progress {
        current: u64,
        total: Option<u64>,
    },
    Done {
        elapsed: Duration,
    },
    /// The result was already there (memoised or in the persistent cache).
    Cached,
    Failed {
        elapsed: Duration,
        message: String,
    },
}

/// One event about one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique in this engine process; every event of an operation carries the same id.
    pub id: u64,
    /// A short human name (`withExec sh -c "..."`, `from alpine`, `pull sha256:abcd…`).
    pub name: String,
    /// Identifies the operation's work (a node digest) when two events may describe the same
    /// work, so a receiver can report it once.
    pub key: Option<String>,
    pub status: Status,
}

impl Event {
    /// The event as one JSON object (the session stream's wire format).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "type": "op",
            "id": self.id,
            "name": self.name,
        });
        if let Some(k) = &self.key {
            v["key"] = k.clone().into();
        }
        match &self.status {
            Status::Started => v["status"] = "started".into(),
            Status::Progress { current, total } => {
                v["status"] = "progress".into();
                v["current"] = (*current).into();
                if let Some(t) = total {
                    v["total"] = (*t).into();
                }
            }
            Status::Done { elapsed } => {
                v["status"] = "done".into();
                v["elapsedMs"] = (elapsed.as_millis() as u64).into();
            }
            Status::Cached => v["status"] = "cached".into(),
            Status::Failed { elapsed, message } => {
                v["status"] = "failed".into();
                v["elapsedMs"] = (elapsed.as_millis() as u64).into();
                v["error"] = message.clone().into();
            }
        }
        v
    }
}

/// Where events go. Implementations must not block (they run inside the solver).
pub trait Sink: Send + Sync {
    fn emit(&self, event: Event);
}

/// A handle on a sink, cheap to clone.
#[derive(Clone)]
pub struct Reporter(Arc<dyn Sink>);

impl Reporter {
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Reporter(sink)
    }

    fn emit(&self, event: Event) {
        self.0.emit(event)
    }
}

tokio::task_local! {
    static CURRENT: Option<Reporter>;
}

/// Runs `fut` with `reporter` receiving the events of the work it does.
pub async fn scope<F: std::future::Future>(reporter: Option<Reporter>, fut: F) -> F::Output {
    CURRENT.scope(reporter, fut).await
}

/// The reporter of the current task, to hand to spawned work.
pub fn current() -> Option<Reporter> {
    CURRENT.try_with(|r| r.clone()).ok().flatten()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Cap on an operation's name: commands can be long.
const MAX_NAME_CHARS: usize = 120;

/// `name`, on one line and at most [`MAX_NAME_CHARS`] characters (with `…` when cut).
pub fn short_name(name: &str) -> String {
    let one_line: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX_NAME_CHARS {
        return one_line;
    }
    let mut s: String = one_line.chars().take(MAX_NAME_CHARS - 1).collect();
    s.push('…');
    s
}

/// Starts an operation: reports `started` now and how it ends later. Without a reporter in
/// scope this does nothing.
pub fn start(name: &str, key: Option<String>) -> Op {
    let reporter = current();
    let op = Op {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        name: short_name(name),
        key,
        started: Instant::now(),
        last_progress: None,
        reporter,
        ended: false,
    };
    op.emit(Status::Started);
    op
}

/// Reports work that was already done (a cache hit), as a single event.
pub fn cached(name: &str, key: Option<String>) {
    if let Some(r) = current() {
        r.emit(Event {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: short_name(name),
            key,
            status: Status::Cached,
        });
    }
}

/// Minimum time between two progress events of one operation.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A running operation. Dropped without an ending (its future was cancelled), it reports a
/// failure saying so.
pub struct Op {
    id: u64,
    name: String,
    key: Option<String>,
    started: Instant,
    last_progress: Option<Instant>,
    reporter: Option<Reporter>,
    ended: bool,
}

impl Op {
    fn emit(&self, status: Status) {
        if let Some(r) = &self.reporter {
            r.emit(Event {
                id: self.id,
                name: self.name.clone(),
                key: self.key.clone(),
                status,
            });
        }
    }

    /// Reports progress, at most every [`PROGRESS_INTERVAL`] (the last value always shows in
    /// the final event's receiver through its own bookkeeping).
    pub fn progress(&mut self, current: u64, total: Option<u64>) {
        if self.reporter.is_none() {
            return;
        }
        let now = Instant::now();
        if self
            .last_progress
            .is_some_and(|t| now.duration_since(t) < PROGRESS_INTERVAL)
            && total != Some(current)
        {
            return;
        }
        self.last_progress = Some(now);
        self.emit(Status::Progress { current, total });
    }

    pub fn done(mut self) {
        self.ended = true;
        self.emit(Status::Done {
            elapsed: self.started.elapsed(),
        });
    }

    pub fn cached(mut self) {
        self.ended = true;
        self.emit(Status::Cached);
    }

    pub fn failed(mut self, message: &str) {
        self.ended = true;
        self.emit(Status::Failed {
            elapsed: self.started.elapsed(),
            message: short_message(message),
        });
    }

    /// Ends the operation as done or failed, after `result`.
    pub fn finish<T, E: std::fmt::Display>(self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.done(),
            Err(e) => self.failed(&e.to_string()),
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.ended {
            self.emit(Status::Failed {
                elapsed: self.started.elapsed(),
                message: "cancelled".into(),
            });
        }
    }
}

/// An error message for a progress line: its first line, capped.
fn short_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let mut s: String = first.chars().take(300).collect();
    if first.chars().count() > 300 || message.lines().nth(1).is_some() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Event>>);

    impl Sink for Collect {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[tokio::test]
    async fn events_reach_the_scope_that_runs_the_work_only() {
        let sink = Arc::new(Collect::default());
        let reporter = Reporter::new(sink.clone());
        scope(Some(reporter), async {
            let op = start("withExec echo hi", Some("k1".into()));
            op.done();
            let op = start("withExec false", None);
            op.failed("process \"false\" did not complete successfully: exit code: 1\nmore");
            cached("from busybox", Some("k2".into()));
            drop(start("from slow", None));
        })
        .await;
        // Outside any scope: nowhere, no panic.
        start("unreported", None).done();
        let events = sink.0.lock().unwrap().clone();
        let statuses: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                let s = match &e.status {
                    Status::Started => "started",
                    Status::Done { .. } => "done",
                    Status::Cached => "cached",
                    Status::Failed { .. } => "failed",
                    Status::Progress { .. } => "progress",
                };
                (e.name.as_str(), s)
            })
            .collect();
        assert_eq!(
            statuses,
            [
                ("withExec echo hi", "started"),
                ("withExec echo hi", "done"),
                ("withExec false", "started"),
                ("withExec false", "failed"),
                ("from busybox", "cached"),
                ("from slow", "started"),
                ("from slow", "failed"),
            ]
        );
        assert_eq!(events[0].id, events[1].id);
        assert_ne!(events[0].id, events[2].id);
        let failed = events[3].to_json();
        assert_eq!(failed["status"], "failed");
        let msg = failed["error"].as_str().unwrap();
        assert!(msg.ends_with('…') && !msg.contains('\n'), "{msg}");
        assert_eq!(events[6].to_json()["error"], "cancelled");
    }

    #[test]
    fn names_are_one_line_and_capped() {
        assert_eq!(short_name("a\nb"), "a b");
        let long = "x".repeat(500);
        let s = short_name(&long);
        assert_eq!(s.chars().count(), MAX_NAME_CHARS);
        assert!(s.ends_with('…'));
    }
}
