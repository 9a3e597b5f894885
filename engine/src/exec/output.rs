//! Capturing a process's output with bounded memory: the last `limit` bytes of each stream
//! stay in memory; once a stream outgrows that, its full copy goes to a file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};

/// The last `limit` bytes written to it.
#[derive(Debug)]
pub(crate) struct Tail {
    limit: usize,
    buf: VecDeque<u8>,
    total: u64,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            limit,
            buf: VecDeque::with_capacity(limit.min(64 << 10)),
            total: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.limit)..];
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.limit);
        self.buf.drain(..overflow.min(self.buf.len()));
        self.buf.extend(data);
    }

    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.total > self.buf.len() as u64
    }

    /// Whether `more` bytes would drop some.
    fn would_overflow(&self, more: usize) -> bool {
        self.total + more as u64 > self.limit as u64
    }

    fn contents(&self) -> (&[u8], &[u8]) {
        self.buf.as_slices()
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf.into()
    }
}

/// A stream's full output on disk, kept because it outgrew the in-memory limit. The file is
/// deleted when this is dropped, unless [`OutputFile::keep`] takes it over.
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    len: u64,
    keep: bool,
}

impl OutputFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the full output in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands the file over to the caller, who must remove it.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One captured stream.
struct Stream {
    tail: Tail,
    spill_path: PathBuf,
    spill: Option<BufWriter<tokio::fs::File>>,
    /// The spill file could not be written; the tail is all there is.
    spill_failed: bool,
}

impl Stream {
    async fn push(&mut self, data: &[u8]) {
        if self.spill.is_none() && !self.spill_failed && self.tail.would_overflow(data.len()) {
            // The tail still holds everything so far: it starts the file.
            match tokio::fs::File::create(&self.spill_path).await {
                Ok(f) => {
                    let mut w = BufWriter::with_capacity(64 << 10, f);
                    let (a, b) = self.tail.contents();
                    let ok = w.write_all(a).await.is_ok() && w.write_all(b).await.is_ok();
                    if ok {
                        self.spill = Some(w);
                    } else {
                        self.fail().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot keep full output in {}: {e}",
                        self.spill_path.display()
                    );
                    self.spill_failed = true;
                }
            }
        }
        if let Some(w) = &mut self.spill {
            if let Err(e) = w.write_all(data).await {
                tracing::warn!("writing full output to {}: {e}", self.spill_path.display());
                self.fail().await;
            }
        }
        self.tail.push(data);
    }

    async fn fail(&mut self) {
        self.spill = None;
        self.spill_failed = true;
        let _ = tokio::fs::remove_file(&self.spill_path).await;
    }

    async fn finish(mut self) -> (Tail, Option<OutputFile>) {
        let mut file = None;
        if let Some(mut w) = self.spill.take() {
            if w.flush().await.is_ok() {
                file = Some(OutputFile {
                    path: self.spill_path.clone(),
                    len: self.tail.total,
                    keep: false,
                });
            } else {
                let _ = tokio::fs::remove_file(&self.spill_path).await;
            }
        }
        (self.tail, file)
    }
}

/// What [`capture`] collected.
pub(crate) struct Captured {
    pub stdout: Tail,
    pub stderr: Tail,
    pub combined: Tail,
    pub stdout_file: Option<OutputFile>,
    pub stderr_file: Option<OutputFile>,
}

/// Reads both pipes to EOF, concurrently, keeping `limit` bytes of each (and of both
/// interleaved in arrival order) and spilling a stream's full copy to `<spill>.stdout` /
/// `<spill>.stderr` once it outgrows `limit`.
pub(crate) async fn capture(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    limit: usize,
    spill: &Path,
) -> Captured {
    let stream = |ext: &str| Stream {
        tail: Tail::new(limit),
        spill_path: spill.with_extension(ext),
        spill: None,
        spill_failed: false,
    };
    let (mut out, mut err) = (stream("stdout"), stream("stderr"));
    let mut combined = Tail::new(limit);
    let (mut out_pipe, mut err_pipe) = (stdout, stderr);
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        // `read` on a pipe is cancel-safe: the branch that loses the race read nothing.
        tokio::select! {
            n = read_some(&mut out_pipe, &mut out_buf), if out_pipe.is_some() => match n {
                Some(n) => {
                    out.push(&out_buf[..n]).await;
                    combined.push(&out_buf[..n]);
                }
                None => out_pipe = None,
            },
            n = read_some(&mut err_pipe, &mut err_buf), if err_pipe.is_some() => match n {
                Some(n) => {
                    err.push(&err_buf[..n]).await;
                    combined.push(&err_buf[..n]);
                }
                None => err_pipe = None,
            },
            else => break,
        }
    }
    let (stdout, stdout_file) = out.finish().await;
    let (stderr, stderr_file) = err.finish().await;
    Captured {
        stdout,
        stderr,
        combined,
        stdout_file,
        stderr_file,
    }
}

/// One read; `None` at EOF or on a read error (a broken pipe ends the stream all the same).
async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> Option<usize> {
    let p = pipe.as_mut()?;
    match p.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}
