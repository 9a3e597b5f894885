//! Showing what the engine does: the `op` events of the session stream, on stderr.
//!
//! * `plain`: one timestamped line per change, `12:03:04.123 [3] withExec ... DONE 1.2s`
//!   (`CACHED`, `ERROR 0.3s: why`); pulls show their bytes when they end.
//! * `tty`: a live list on the terminal (`indicatif`): a spinner per running operation, a byte
//!   bar for pulls; finished operations print as plain lines above it.
//! * `quiet`: nothing.
//! * `auto`: `tty` when stderr is a terminal, else `plain`.
//!
//! Stdout is never touched: SDK programs and `dagger query` write their results there.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Plain,
    Tty,
    Quiet,
}

/// The renderer. Shared by the session's event reader and whoever ends the session.
pub struct Progress {
    inner: Mutex<Inner>,
}

struct Op {
    /// Numbered per session, in order of appearance.
    n: u64,
    name: String,
    current: u64,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

struct Inner {
    mode: Mode,
    ops: HashMap<u64, Op>,
    next: u64,
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new(mode: Mode) -> Arc<Progress> {
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            m => m,
        };
        let multi = (mode == Mode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Arc::new(Progress {
            inner: Mutex::new(Inner {
                mode,
                ops: HashMap::new(),
                next: 1,
                multi,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one `{"type":"op",...}` event from the engine.
    pub fn event(&self, v: &Value) {
        let mut inner = self.lock();
        if inner.mode == Mode::Quiet {
            return;
        }
        let Some(id) = v["id"].as_u64() else { return };
        let status = v["status"].as_str().unwrap_or_default();
        let name = v["name"].as_str().unwrap_or("?").to_string();
        if !inner.ops.contains_key(&id) {
            let n = inner.next;
            inner.next += 1;
            inner.ops.insert(
                id,
                Op {
                    n,
                    name,
                    current: 0,
                    total: None,
                    bar: None,
                },
            );
        }
        let elapsed = v["elapsedMs"]
            .as_u64()
            .map(|ms| format!(" {}", seconds(Duration::from_millis(ms))))
            .unwrap_or_default();
        match status {
            "started" => {
                let line = inner.line(id, "");
                inner.started(id, line);
            }
            "progress" => {
                let current = v["current"].as_u64().unwrap_or(0);
                let total = v["total"].as_u64();
                inner.progress(id, current, total);
            }
            "done" => {
                let line = inner.line(id, &format!(" DONE{elapsed}"));
                inner.ended(id, line);
            }
            "cached" => {
                let line = inner.line(id, " CACHED");
                inner.ended(id, line);
            }
            "failed" => {
                let error = v["error"].as_str().unwrap_or("failed");
                let line = inner.line(id, &format!(" ERROR{elapsed}: {error}"));
                inner.ended(id, line);
            }
            _ => {}
        }
    }

    /// Prints a message of the CLI's own (an export written, a warning) in the same style.
    pub fn note(&self, message: &str) {
        let inner = self.lock();
        if inner.mode == Mode::Quiet {
            return;
        }
        inner.print(&format!("{} {message}", clock()));
    }

    /// Clears the live display (at the end of the session).
    pub fn finish(&self) {
        let mut inner = self.lock();
        for op in inner.ops.values_mut() {
            if let Some(bar) = op.bar.take() {
                bar.finish_and_clear();
            }
        }
        if let Some(m) = &inner.multi {
            let _ = m.clear();
        }
    }
}

impl Inner {
    /// `12:03:04.123 [3] name<suffix>`, with the bytes of an operation that counted some.
    fn line(&self, id: u64, suffix: &str) -> String {
        let Some(op) = self.ops.get(&id) else {
            return String::new();
        };
        let bytes = match (op.current, op.total) {
            (0, None) => String::new(),
            (c, Some(t)) => format!(" {} / {}", human_bytes(c), human_bytes(t)),
            (c, None) => format!(" {}", human_bytes(c)),
        };
        format!("{} [{}] {}{bytes}{suffix}", clock(), op.n, op.name)
    }

    fn print(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{line}");
            }
        }
    }

    fn started(&mut self, id: u64, line: String) {
        match self.multi.clone() {
            Some(m) => {
                let Some(op) = self.ops.get_mut(&id) else {
                    return;
                };
                let bar = ProgressBar::new_spinner()
                    .with_style(
                        ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    )
                    .with_prefix(op.n.to_string())
                    .with_message(op.name.clone());
                let bar = m.add(bar);
                bar.enable_steady_tick(Duration::from_millis(120));
                op.bar = Some(bar);
            }
            None => self.print(&line),
        }
    }

    fn progress(&mut self, id: u64, current: u64, total: Option<u64>) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        op.current = current;
        op.total = total.or(op.total);
        if let (Some(bar), Some(t)) = (&op.bar, op.total) {
            if bar.length() != Some(t) {
                bar.set_length(t);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{prefix}] {msg} {bytes} / {total_bytes} {wide_bar} {elapsed}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
            bar.set_position(current);
        }
    }

    fn ended(&mut self, id: u64, line: String) {
        if let Some(op) = self.ops.get_mut(&id) {
            if let Some(bar) = op.bar.take() {
                bar.finish_and_clear();
            }
        }
        self.print(&line);
        self.ops.remove(&id);
    }
}

/// `1.2s`, `250ms`, `3m04s`.
pub fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// `512 B`, `12.3 KiB`, `45.6 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The time of day (UTC) as `HH:MM:SS.mmm`.
fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(12_900), "12.6 KiB");
        assert_eq!(human_bytes(47_815_065), "45.6 MiB");
        assert_eq!(seconds(Duration::from_millis(250)), "250ms");
        assert_eq!(seconds(Duration::from_millis(1234)), "1.2s");
        assert_eq!(seconds(Duration::from_secs(184)), "3m04s");
        let c = clock();
        assert_eq!(c.len(), 12, "{c}");
        assert_eq!(&c[2..3], ":");
        assert_eq!(&c[8..9], ".");
    }

    #[test]
    fn plain_lines_number_operations_and_show_bytes() {
        let p = Progress::new(Mode::Plain);
        let mut inner = p.lock();
        inner.ops.insert(
            7,
            Op {
                n: 1,
                name: "pull sha256:0123456789ab…".into(),
                current: 0,
                total: None,
                bar: None,
            },
        );
        inner.progress(7, 1024 * 1024, Some(4 * 1024 * 1024));
        let line = inner.line(7, " DONE 1.0s");
        assert!(
            line.ends_with("[1] pull sha256:0123456789ab… 1.0 MiB / 4.0 MiB DONE 1.0s"),
            "{line}"
        );
    }
}
