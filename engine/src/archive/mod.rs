//! Layer apply: OCI/Docker layer tars applied inside a root, whatever the links and whiteouts.
//!
//! [`apply_layer`] decompresses a layer (detected by magic bytes), hashes the uncompressed
//! stream (the diff ID), parses it with the `tar` crate (entries and header/PAX accessors only,
//! never its `unpack`) and writes every entry itself with fd-relative calls from
//! [`crate::sys::fsops`]:
//!
//! - The root is opened once. An entry's name is cleaned lexically (`..` never climbs above the
//!   root), its parent directory is resolved with `openat2(RESOLVE_IN_ROOT)` so absolute and
//!   `..` symlinks land inside the root (containerd's `fs.RootPath`), and missing parents are
//!   created. The final component is created with `*at()` calls on the parent fd and is never
//!   followed: whatever is there is unlinked first (a directory stays if the entry is one too).
//! - Metadata goes on an fd pinned to the new inode, in containerd's order: lchown, xattrs,
//!   chmod, times. Directory times are set at the end, once their children exist.
//! - Parser disagreements are refused rather than resolved (see `entry.rs`): tar-smuggling
//!   attacks live in the gap between what two parsers see.
//!
//! The caller compares [`Applied::diff_id`] with the image config and discards the directory on
//! a mismatch; the whole stream, trailing zero blocks included, is read and hashed.

mod apply;
pub mod diff;
mod entry;
mod names;
#[cfg(test)]
mod tests;

use crate::error::{Classify, ErrorKind};
use crate::oci::{Digest, Hasher};
use crate::sys::fsops;
use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use thiserror::Error;

/// How whiteout entries (`.wh.NAME`, `.wh..wh..opq`) are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Apply onto an existing tree (native snapshotter: a copy of the parent): `.wh.x` deletes x, `.wh..wh..opq` empties the dir of entries from lower layers (not entries this same layer already created, see T14).
    Apply,
    /// Apply into a fresh, empty overlay upper dir: `.wh.x` becomes a 0:0 char device `x`; an opaque marker sets xattr trusted.overlay.opaque="y" on the dir; marker files are never written. Hardlinks whose target is not in this layer are resolved by copying from `lowers` (top-most first).
    Overlay { lowers: Vec<PathBuf> },
}

/// Options for [`apply_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    pub whiteouts: WhiteoutMode,
    /// Cap on the uncompressed tar stream, and on the bytes its files expand to (a GNU sparse
    /// entry can describe far more than it carries).
    pub max_uncompressed_bytes: u64,
    /// Cap on the number of tar entries.
    pub max_entries: u64,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            whiteouts: WhiteoutMode::Apply,
            max_uncompressed_bytes: 32 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// sha256 of the complete uncompressed stream, trailing blocks included.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// Tar entries read (extension headers such as PAX and GNU long names not counted).
    pub entries: u64,
}

/// A layer's compression, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Detects the compression by magic bytes, as containerd does; media types lie (T25).
pub fn detect_compression(first_bytes: &[u8]) -> Compression {
    const GZIP: &[u8] = &[0x1f, 0x8b, 0x08];
    const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    if first_bytes.starts_with(GZIP) {
        return Compression::Gzip;
    }
    if first_bytes.starts_with(ZSTD) {
        return Compression::Zstd;
    }
    // A zstd stream may open with a skippable frame: magic 0x184D2A50..=0x184D2A5F.
    if let Some(magic) = first_bytes.get(..4) {
        let magic = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
        if magic & 0xffff_fff0 == 0x184d_2a50 {
            return Compression::Zstd;
        }
    }
    Compression::None
}

#[derive(Debug, Error)]
pub enum ArchiveError {
    /// Corrupt compression, a malformed or ambiguous tar, or an entry we refuse to write.
    #[error("invalid archive: {0}")]
    Invalid(String),
    #[error("layer exceeds the uncompressed size cap (max_uncompressed_bytes = {limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("layer exceeds the entry count cap (max_entries = {limit})")]
    TooManyEntries { limit: u64 },
    /// The layer stream itself failed (not the archive's fault).
    #[error("cannot read the layer stream: {0}")]
    Read(#[source] io::Error),
    /// A filesystem call under the root failed.
    #[error("cannot {op} for {path:?}: {source}")]
    Io {
        op: &'static str,
        /// The entry's name in the archive, or the root or lower directory.
        path: String,
        #[source]
        source: io::Error,
    },
}

impl Classify for ArchiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Invalid(_)
            | ArchiveError::TooLarge { .. }
            | ArchiveError::TooManyEntries { .. } => ErrorKind::InvalidArgument,
            ArchiveError::Read(_) => ErrorKind::Unavailable,
            // Resource exhaustion is worth retrying after GC or when load drops.
            ArchiveError::Io { source, .. } if fsops::is_resource_exhaustion(source) => {
                ErrorKind::Unavailable
            }
            // A name too long, or a file or symlink loop where the archive put a directory.
            ArchiveError::Io { source, .. } if fsops::is_bad_path(source) => {
                ErrorKind::InvalidArgument
            }
            ArchiveError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// Decompresses (detected by magic: gzip via flate2::read::MultiGzDecoder — multi-member!, zstd, or plain tar), hashes the uncompressed stream (sha256 = diff_id), and applies every entry under `root`. Blocking; callers use spawn_blocking.
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    opts: &ApplyOptions,
) -> Result<Applied, ArchiveError> {
    let mut layer = layer;
    let mut head = Vec::with_capacity(8);
    (&mut layer)
        .take(8)
        .read_to_end(&mut head)
        .map_err(ArchiveError::Read)?;
    let compression = detect_compression(&head);
    let source_failed = Rc::new(Cell::new(false));
    let raw = Source {
        inner: io::Cursor::new(head).chain(layer),
        failed: Rc::clone(&source_failed),
    };
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(raw),
        // Multi-member: pigz and eStargz layers are several gzip members back to back, and
        // GzDecoder would silently stop after the first.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(raw).map_err(ArchiveError::Read)?)
        }
    };

    let mut applier = apply::Applier::new(root, opts)?;
    let headers = Rc::new(HeaderGate::default());
    let mut archive = tar::Archive::new(Meter::new(
        decoded,
        opts.max_uncompressed_bytes,
        Rc::clone(&headers),
    ));
    let walked = (|| {
        let mut entries = archive.entries().map_err(ArchiveError::Read)?;
        loop {
            // Everything the parser reads to produce the next entry is headers.
            headers.open();
            let next = entries.next();
            headers.close();
            let Some(entry) = next else {
                return Ok(());
            };
            let mut entry = entry.map_err(ArchiveError::Read)?;
            applier.apply(&mut entry)?;
            // Data the applier skipped (a whiteout's, say) is read here, outside the gate.
            io::copy(&mut entry, &mut io::sink()).map_err(ArchiveError::Read)?;
        }
    })();
    let mut meter = archive.into_inner();
    walked.map_err(|e| meter.blame(e, source_failed.get()))?;
    // The tar parser stops at the first zero block; the diff ID covers the rest too.
    if let Err(e) = meter.drain() {
        return Err(meter.blame(ArchiveError::Read(e), source_failed.get()));
    }
    applier.finish()?;
    Ok(Applied {
        diff_id: meter.hasher.finish(),
        uncompressed_size: meter.count,
        entries: applier.entries(),
    })
}

/// Bytes the tar parser may read to produce one entry: its header plus extension headers (PAX
/// records, GNU long names). The `tar` crate buffers extension headers whole, so without this a
/// layer could claim a 30 GiB long name and exhaust memory well inside the size cap. Real ones
/// are a few KiB (PATH_MAX names, xattr values of at most 64 KiB).
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Whether the parser is reading headers, and how much.
#[derive(Default)]
struct HeaderGate {
    reading: Cell<bool>,
    read: Cell<u64>,
    exceeded: Cell<bool>,
}

impl HeaderGate {
    fn open(&self) {
        self.reading.set(true);
        self.read.set(0);
    }

    fn close(&self) {
        self.reading.set(false);
    }

    /// Counts `n` header bytes; false once past the limit.
    fn admit(&self, n: usize) -> bool {
        if !self.reading.get() {
            return true;
        }
        let read = self.read.get().saturating_add(n as u64);
        self.read.set(read);
        if read > MAX_HEADER_BYTES {
            self.exceeded.set(true);
        }
        read <= MAX_HEADER_BYTES
    }
}

/// The compressed layer stream, noting whether it failed (so a read error isn't blamed on the
/// archive's contents).
struct Source<R> {
    inner: R,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed.set(true);
            }
        })
    }
}

/// Hashes and counts the uncompressed stream, enforcing the byte cap, and remembers whether a
/// failure came from below (the layer stream or its decompressor) or from the tar parser.
struct Meter<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    limit: u64,
    over_limit: bool,
    stream_failed: bool,
    trailing_data: bool,
    headers: Rc<HeaderGate>,
}

impl<R: Read> Meter<R> {
    fn new(inner: R, limit: u64, headers: Rc<HeaderGate>) -> Self {
        Meter {
            inner,
            hasher: Hasher::new(),
            count: 0,
            limit,
            over_limit: false,
            stream_failed: false,
            trailing_data: false,
            headers,
        }
    }

    /// Reads what follows the end-of-archive marker: zero blocks and record padding, normally.
    fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match self.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if !self.trailing_data && buf[..n].iter().any(|b| *b != 0) {
                self.trailing_data = true;
                tracing::warn!("layer has non-zero data after its end-of-archive marker; ignored");
            }
        }
        Ok(())
    }

    /// Turns an I/O error seen while walking the tar into the error it really is: the cap, the
    /// layer stream (`source_failed`), the decompressor, or else the tar parser.
    fn blame(&self, err: ArchiveError, source_failed: bool) -> ArchiveError {
        if self.over_limit {
            return ArchiveError::TooLarge { limit: self.limit };
        }
        if self.headers.exceeded.get() {
            return ArchiveError::Invalid(format!(
                "an entry's headers (PAX records, GNU long names) exceed {MAX_HEADER_BYTES} bytes"
            ));
        }
        match err {
            ArchiveError::Read(e) if source_failed => ArchiveError::Read(e),
            ArchiveError::Read(e) if self.stream_failed => {
                ArchiveError::Invalid(format!("corrupt or truncated compressed stream: {e}"))
            }
            ArchiveError::Read(e) => ArchiveError::Invalid(format!("malformed tar stream: {e}")),
            other => other,
        }
    }
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            // min: a misbehaving reader must not make us slice out of bounds.
            Ok(n) => n.min(buf.len()),
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stream_failed = true;
                }
                return Err(e);
            }
        };
        let count = self.count.saturating_add(n as u64);
        if count > self.limit {
            self.over_limit = true;
            return Err(io::Error::other("layer exceeds max_uncompressed_bytes"));
        }
        if !self.headers.admit(n) {
            return Err(io::Error::other("entry headers too large"));
        }
        self.count = count;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
