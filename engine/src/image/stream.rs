//! Unpacking a layer while it downloads, on two threads.
//!
//! * [`Tap`]: the download writes every chunk to the content store first (that copy is what
//!   gets verified and kept), then hands the same chunk to the layer's applier, so the layer
//!   unpacks as it arrives instead of after the last byte. Only a download that starts at byte 0
//!   can feed an applier; a resumed download, a blob that is already stored, or a download some
//!   other pull runs leaves the tap *unusable*, and the layer is applied from the stored blob
//!   once it is complete, as before. An applier sees the end of the stream only after the blob
//!   was verified and committed; if the download fails, the applier's read fails, so nothing it
//!   wrote can be committed (the caller also reports the download's error, not the applier's).
//! * [`apply_pipelined`]: decompression (gzip or zstd, by magic, exactly as
//!   [`archive::apply_layer`] detects it) runs on its own thread and feeds the plain tar to
//!   [`archive::apply_layer`] on the calling thread, which hashes it (diff_id), parses it and
//!   writes the files. Decompression and file creation each take about half of a layer's
//!   unpack time, so with two cores the unpack takes about half as long.

use crate::archive::{self, Applied, ApplyOptions, ArchiveError, Compression};
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes a tap holds for an applier that has not attached yet; past this the tap gives up
/// (becomes unusable) and the layer is applied from the stored blob. Layers after the first
/// usually finish downloading while an earlier one unpacks, so buffering them whole would only
/// cost memory. A tap also gives up when its download ends before an applier attached, so at
/// most one such buffer per running download (the registry client's per-host connection limit)
/// is held.
const UNATTACHED_LIMIT: usize = 4 << 20;
/// Bytes a tap holds for an attached applier before the download waits for it. Enough that
/// the download (and the fsync of its commit) usually ends well before the unpack does: the
/// unpack cannot end before the commit.
const ATTACHED_LIMIT: usize = 16 << 20;
/// Decompressed bytes per message from the decompression thread, and messages in flight.
const DECODED_CHUNK: usize = 256 << 10;
const DECODED_QUEUE: usize = 8;

/// Whether a tap can feed an applier, as far as the download is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TapSource {
    /// The download has not started (it may be waiting for a connection).
    Pending,
    /// A download from byte 0 is pushing chunks.
    Streaming,
    /// No chunks will come from byte 0 on: apply from the stored blob.
    Unusable,
}

#[derive(Default)]
struct TapState {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    attached: bool,
    /// The applier stopped reading (it finished, failed, or the pull was abandoned).
    reader_gone: bool,
    /// The pull was abandoned: the applier's next read fails.
    abandoned: bool,
    /// Set by the download: `Ok` once the blob is verified and committed.
    end: Option<Result<(), String>>,
}

/// A download's chunks, handed to one applier (see the module docs).
pub(super) struct Tap {
    state: Mutex<TapState>,
    changed: Condvar,
    source: tokio::sync::watch::Sender<TapSource>,
}

impl Tap {
    pub(super) fn new() -> Arc<Tap> {
        Arc::new(Tap {
            state: Mutex::new(TapState::default()),
            changed: Condvar::new(),
            source: tokio::sync::watch::Sender::new(TapSource::Pending),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the download has started from byte 0 or the tap is known to be unusable.
    pub(super) async fn source_ready(&self) -> TapSource {
        let mut rx = self.source.subscribe();
        let state = match rx.wait_for(|s| *s != TapSource::Pending).await {
            Ok(s) => *s,
            Err(_) => TapSource::Unusable,
        };
        state
    }

    /// Download side: chunks from byte 0 follow.
    pub(super) fn start(&self) {
        self.source.send_if_modified(|s| {
            let pending = *s == TapSource::Pending;
            if pending {
                *s = TapSource::Streaming;
            }
            pending
        });
    }

    /// Marks the tap unusable unless an applier is already attached (then the download must
    /// end it with [`Tap::finish`]).
    fn give_up(&self, st: &mut TapState) {
        st.chunks.clear();
        st.buffered = 0;
        self.source.send_replace(TapSource::Unusable);
        self.changed.notify_all();
    }

    /// Download side: the next chunk, already written to the content store. Blocks while an
    /// attached applier is [`ATTACHED_LIMIT`] bytes behind.
    pub(super) fn push(&self, chunk: Bytes) {
        let mut st = self.lock();
        loop {
            if st.reader_gone || *self.source.borrow() == TapSource::Unusable {
                return;
            }
            if !st.attached {
                if st.buffered + chunk.len() > UNATTACHED_LIMIT {
                    self.give_up(&mut st);
                    return;
                }
                break;
            }
            if st.buffered < ATTACHED_LIMIT {
                break;
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.buffered += chunk.len();
        st.chunks.push_back(chunk);
        self.changed.notify_all();
    }

    /// Download side: the blob was verified and committed (`Ok`), or the download failed.
    pub(super) fn finish(&self, end: Result<(), String>) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.end = Some(end);
        }
        if !st.attached {
            // The stored blob serves a later applier as well, without holding memory.
            self.give_up(&mut st);
        }
        self.changed.notify_all();
    }

    /// The fetch task ended (however): a tap the download never started is unusable, and an
    /// attached applier must not wait for chunks that will never come.
    pub(super) fn close(&self) {
        let mut st = self.lock();
        if *self.source.borrow() == TapSource::Pending {
            self.give_up(&mut st);
        }
        if st.end.is_none() {
            st.end = Some(Err("the layer download stopped before the end".into()));
        }
        self.changed.notify_all();
    }

    /// The pull was abandoned: the applier stops at its next read and the download stops
    /// feeding it.
    pub(super) fn abandon(&self) {
        let mut st = self.lock();
        st.abandoned = true;
        st.reader_gone = true;
        st.chunks.clear();
        st.buffered = 0;
        self.changed.notify_all();
    }

    /// Applier side: the reader of this tap's chunks, from byte 0; `None` if the tap cannot
    /// provide them (apply from the stored blob instead).
    pub(super) fn attach(self: &Arc<Self>) -> Option<TapReader> {
        let mut st = self.lock();
        if st.attached || st.reader_gone || *self.source.borrow() != TapSource::Streaming {
            return None;
        }
        st.attached = true;
        Some(TapReader {
            tap: Arc::clone(self),
            current: Bytes::new(),
        })
    }
}

/// Reads a tap's chunks in order; the stream ends once the download committed the blob.
pub(super) struct TapReader {
    tap: Arc<Tap>,
    current: Bytes,
}

impl Read for TapReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.is_empty() {
            let mut st = self.tap.lock();
            loop {
                if st.abandoned {
                    return Err(io::Error::other("the pull was abandoned"));
                }
                if let Some(chunk) = st.chunks.pop_front() {
                    st.buffered -= chunk.len();
                    self.tap.changed.notify_all();
                    self.current = chunk;
                    break;
                }
                match &st.end {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e.clone())),
                    None => {}
                }
                st = self.tap.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

impl Drop for TapReader {
    fn drop(&mut self) {
        let mut st = self.tap.lock();
        st.reader_gone = true;
        st.chunks.clear();
        st.buffered = 0;
        self.tap.changed.notify_all();
    }
}

/// Where an unpack's time went.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ApplyStats {
    /// Blocked reading the compressed stream (waiting for the download, in streaming mode).
    pub source_wait: Duration,
    /// Decompressing, on the decompression thread (waits excluded).
    pub decode: Duration,
    /// Hashing, parsing and writing files, on the calling thread (waits for decompressed
    /// bytes excluded).
    pub write: Duration,
}

/// Times the reads of the compressed stream.
struct Timed<R> {
    inner: R,
    waited: Duration,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = Instant::now();
        let r = self.inner.read(buf);
        self.waited += t.elapsed();
        r
    }
}

/// How the decompression thread ended.
enum DecodeEnd {
    /// The whole stream was decompressed and handed over.
    Done,
    /// The applier stopped reading first.
    Stopped,
    /// Reading the compressed stream failed (the download, not the layer's bytes).
    SourceFailed,
    /// The compressed bytes are corrupt or truncated.
    Corrupt(io::Error),
}

/// [`archive::apply_layer`] with decompression on a second thread (see the module docs).
/// Errors are the ones `apply_layer` gives for the same stream: a corrupt compressed stream is
/// [`ArchiveError::Invalid`], a failing source [`ArchiveError::Read`].
pub(super) fn apply_pipelined(
    root: &Path,
    source: impl Read + Send,
    opts: &ApplyOptions,
) -> Result<(Applied, ApplyStats), ArchiveError> {
    let mut source = Timed {
        inner: source,
        waited: Duration::ZERO,
    };
    let mut head = Vec::with_capacity(8);
    (&mut source)
        .take(8)
        .read_to_end(&mut head)
        .map_err(ArchiveError::Read)?;
    let compression = archive::detect_compression(&head);
    let started = Instant::now();
    if compression == Compression::None {
        // Nothing to decompress: apply_layer reads the tar itself.
        let applied =
            archive::apply_layer(root, Read::chain(io::Cursor::new(head), &mut source), opts)?;
        let waited = source.waited;
        let stats = ApplyStats {
            source_wait: waited,
            decode: Duration::ZERO,
            write: started.elapsed().saturating_sub(waited),
        };
        return Ok((applied, stats));
    }

    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DECODED_QUEUE);
    // Consumed buffers go back to the decompression thread: no allocation (and no page faults
    // of fresh mappings) per chunk.
    let (recycle, recycled) = sync_channel::<Vec<u8>>(DECODED_QUEUE + 2);
    std::thread::scope(|scope| {
        let decoder = std::thread::Builder::new()
            .name("layer-decompress".into())
            .spawn_scoped(scope, move || {
                let t = Instant::now();
                let before = source.waited;
                let mut send_wait = Duration::ZERO;
                let end = decode(
                    &mut Read::chain(io::Cursor::new(head), &mut source),
                    compression,
                    (&tx, &recycled),
                    &mut send_wait,
                );
                let busy = t
                    .elapsed()
                    .saturating_sub(source.waited - before + send_wait);
                (end, source.waited, busy)
            })
            .map_err(|e| ArchiveError::Io {
                op: "start the decompression thread",
                path: root.display().to_string(),
                source: e,
            })?;
        let mut decoded = Decoded {
            rx,
            recycle,
            buf: Vec::new(),
            pos: 0,
            waited: Duration::ZERO,
        };
        let looks_compressed = decoded
            .head(8)
            .map(|head| archive::detect_compression(head) != Compression::None)
            .map_err(ArchiveError::Read);
        let result = looks_compressed.and_then(|looks_compressed| {
            if !looks_compressed {
                archive::apply_layer(root, &mut decoded, opts)
            } else {
                // The tar itself opens with compression magic (an entry name starting with
                // 1f 8b 08, say). apply_layer would decompress it again, so hand it over inside
                // a gzip stream of stored (uncompressed) blocks: it unwraps exactly those bytes.
                let wrapped =
                    flate2::read::GzEncoder::new(&mut decoded, flate2::Compression::none());
                archive::apply_layer(root, wrapped, opts)
            }
        });
        let write = started.elapsed().saturating_sub(decoded.waited);
        // Unblocks the decompression thread if apply_layer stopped early.
        drop(decoded);
        let (end, source_wait, decode_busy) = decoder.join().map_err(|_| {
            ArchiveError::Read(io::Error::other("the decompression thread panicked"))
        })?;
        let stats = ApplyStats {
            source_wait,
            decode: decode_busy,
            write,
        };
        match (result, end) {
            (Ok(applied), _) => Ok((applied, stats)),
            // The decompressor's failure reached apply_layer as a read error: say what it was,
            // as apply_layer does when it decompresses itself.
            (Err(ArchiveError::Read(_)), DecodeEnd::Corrupt(e)) => Err(ArchiveError::Invalid(
                format!("corrupt or truncated compressed stream: {e}"),
            )),
            (Err(e), DecodeEnd::Done | DecodeEnd::Stopped | DecodeEnd::SourceFailed) => Err(e),
            (Err(e), DecodeEnd::Corrupt(_)) => Err(e),
        }
    })
}

/// Reads a source that fails like `inner` and records whether it did.
struct Source<'a, R> {
    inner: &'a mut R,
    failed: bool,
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed = true;
            }
        })
    }
}

/// The decompression thread: decompresses `source` into [`DECODED_CHUNK`] messages.
fn decode(
    source: &mut impl Read,
    compression: Compression,
    (tx, recycled): (&SyncSender<io::Result<Vec<u8>>>, &Receiver<Vec<u8>>),
    send_wait: &mut Duration,
) -> DecodeEnd {
    let mut src = Source {
        inner: source,
        failed: false,
    };
    let outcome = {
        // The same decoders apply_layer uses: multi-member gzip (pigz, eStargz), zstd frames.
        let mut decoder: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut src)),
            Compression::Zstd => match zstd::stream::read::Decoder::new(&mut src) {
                Ok(d) => Box::new(d),
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return DecodeEnd::SourceFailed;
                }
            },
            Compression::None => Box::new(&mut src),
        };
        loop {
            let mut chunk = recycled
                .try_recv()
                .unwrap_or_else(|_| vec![0u8; DECODED_CHUNK]);
            chunk.resize(DECODED_CHUNK, 0);
            let mut filled = 0;
            let mut failure = None;
            while filled < chunk.len() {
                match decoder.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            chunk.truncate(filled);
            let t = Instant::now();
            if filled > 0 && tx.send(Ok(chunk)).is_err() {
                break Ok(false);
            }
            *send_wait += t.elapsed();
            if let Some(e) = failure {
                break Err(e);
            }
            if filled == 0 {
                break Ok(true);
            }
        }
    };
    match outcome {
        Ok(true) => DecodeEnd::Done,
        Ok(false) => DecodeEnd::Stopped,
        Err(e) => {
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            if src.failed {
                DecodeEnd::SourceFailed
            } else {
                DecodeEnd::Corrupt(e)
            }
        }
    }
}

/// The decompressed stream, read from the decompression thread's messages.
struct Decoded {
    rx: Receiver<io::Result<Vec<u8>>>,
    recycle: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    waited: Duration,
}

impl Decoded {
    /// Receives the next message into `buf` (after what is left); false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        let t = Instant::now();
        let msg = self.rx.recv();
        self.waited += t.elapsed();
        match msg {
            Ok(Ok(chunk)) => {
                if self.pos == self.buf.len() {
                    let used = std::mem::replace(&mut self.buf, chunk);
                    self.pos = 0;
                    if used.capacity() == DECODED_CHUNK {
                        let _ = self.recycle.try_send(used);
                    }
                } else {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.buf.extend_from_slice(&chunk);
                }
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
            // The thread ended without an error message: the stream is complete.
            Err(_) => Ok(false),
        }
    }

    /// The next `n` bytes without consuming them (fewer at the end of the stream).
    fn head(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.buf.len() - self.pos < n {
            if !self.fill()? {
                break;
            }
        }
        let end = self.buf.len().min(self.pos + n);
        Ok(&self.buf[self.pos..end])
    }
}

impl Read for Decoded {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() && !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::WhiteoutMode;
    use std::io::Write;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn opts() -> ApplyOptions {
        ApplyOptions {
            whiteouts: WhiteoutMode::Apply,
            ..ApplyOptions::default()
        }
    }

    /// apply_pipelined gives what apply_layer gives, for gzip, zstd and plain layers.
    #[test]
    fn same_result_as_apply_layer() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let tar = tar_of(&[("a/one", b"1"), ("a/big", &big), ("b", b"two")]);
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for layer in [gzip(&tar), zst, tar.clone()] {
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let want = archive::apply_layer(d1.path(), &layer[..], &opts()).unwrap();
            let (got, _) = apply_pipelined(d2.path(), &layer[..], &opts()).unwrap();
            assert_eq!(got, want);
            assert_eq!(std::fs::read(d2.path().join("a/big")).unwrap(), big);
            assert_eq!(std::fs::read(d2.path().join("b")).unwrap(), b"two");
        }
    }

    /// A tar whose first bytes look like gzip is applied as that tar, not decompressed twice.
    #[test]
    fn tar_opening_with_gzip_magic_is_not_decompressed_twice() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"\x1f\x8b\x08weird");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        assert_eq!(archive::detect_compression(&tar), Compression::Gzip);
        let layer = gzip(&tar);
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let want = archive::apply_layer(d1.path(), &layer[..], &opts()).unwrap();
        let (got, _) = apply_pipelined(d2.path(), &layer[..], &opts()).unwrap();
        assert_eq!(got, want);
        assert_eq!(std::fs::read(d2.path().join(name)).unwrap(), b"x");
    }

    /// Corrupt and truncated compressed streams are invalid archives, as with apply_layer; a
    /// failing source is a read error.
    #[test]
    fn errors_match_apply_layer() {
        let tar = tar_of(&[("f", &[5u8; 200_000][..])]);
        let mut corrupt = gzip(&tar);
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        let truncated = gzip(&tar)[..100].to_vec();
        for layer in [corrupt, truncated] {
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let want = archive::apply_layer(d1.path(), &layer[..], &opts()).unwrap_err();
            let got = apply_pipelined(d2.path(), &layer[..], &opts()).unwrap_err();
            assert!(matches!(want, ArchiveError::Invalid(_)), "{want}");
            assert!(matches!(got, ArchiveError::Invalid(_)), "{got}");
        }

        struct Failing(Vec<u8>, usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() / 2 {
                    return Err(io::Error::other("connection reset"));
                }
                let n = buf.len().min(self.0.len() / 2 - self.1).min(1000);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let d = tempfile::tempdir().unwrap();
        let got = apply_pipelined(d.path(), Failing(gzip(&tar), 0), &opts()).unwrap_err();
        assert!(matches!(got, ArchiveError::Read(_)), "{got}");
    }

    /// The applier reads a tap's chunks in order and sees the end only once the download
    /// finished; a failed download fails its read; an unattached tap gives up when its buffer
    /// fills.
    #[test]
    fn tap_hands_over_chunks_and_the_end() {
        let tap = Tap::new();
        tap.start();
        let mut reader = tap.attach().expect("streaming");
        let writer = {
            let tap = tap.clone();
            std::thread::spawn(move || {
                for i in 0..100u8 {
                    tap.push(Bytes::from(vec![i; 100_000]));
                }
                tap.finish(Ok(()));
            })
        };
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert_eq!(all.len(), 10_000_000);
        assert!(all
            .chunks(100_000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));

        let tap = Tap::new();
        tap.start();
        let mut reader = tap.attach().unwrap();
        tap.push(Bytes::from_static(b"abc"));
        tap.finish(Err("digest mismatch".into()));
        let mut buf = Vec::new();
        let err = reader.read_to_end(&mut buf).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"));

        let tap = Tap::new();
        tap.start();
        for _ in 0..5 {
            tap.push(Bytes::from(vec![0u8; 1 << 20]));
        }
        assert!(tap.attach().is_none(), "gave up past UNATTACHED_LIMIT");

        let tap = Tap::new();
        tap.close();
        assert!(tap.attach().is_none(), "never started");

        let tap = Tap::new();
        tap.start();
        tap.push(Bytes::from_static(b"small"));
        tap.finish(Ok(()));
        assert!(tap.attach().is_none(), "ended before an applier attached");
    }
}
