//! What one tar entry says, read through the `tar` crate's accessors and cross-checked.
//!
//! Tar-smuggling bugs (CVE-2026-33055, TARmageddon) live where two parsers frame or name an
//! entry differently: the image then looks one way to a scanner (Go, GNU tar) and another way
//! here. So wherever the `tar` crate, Go's `archive/tar` and GNU tar could disagree, the entry
//! is refused instead of guessed at:
//!
//! - a PAX record the crate can't frame (it splits records on newlines, so a value holding one
//!   is misread: composefs/tar-rs#452; the fragments could even pose as `size` or `linkpath`),
//!   duplicate PAX keys (the crate takes the first, Go and GNU tar the last) and PAX sparse
//!   files (the crate doesn't expand them);
//! - a PAX `size`, `path`, `linkpath`, `uid` or `gid` that differs from what the crate used,
//!   e.g. a GNU long name and a PAX path on one entry (the crate and Go take the long name,
//!   GNU tar the PAX path);
//! - data on an entry type that has none (a symlink with a size: Go skips no data, the crate
//!   skips `size` bytes);
//! - unknown entry types.

use super::names::display;
use super::ArchiveError;
use crate::sys::fsops::Time;
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;

/// The kinds of entry the applier writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A PAX global header: ignored, as containerd does.
    GlobalHeader,
}

impl Kind {
    /// Kinds that carry no data, whatever their size field says.
    fn header_only(self) -> bool {
        !matches!(self, Kind::File | Kind::GlobalHeader)
    }
}

/// An entry's name, target and metadata, validated.
#[derive(Debug, Clone)]
pub struct Described {
    /// The name as stored (after GNU long name or PAX path), before cleaning.
    pub name: Vec<u8>,
    /// The symlink or hardlink target as stored.
    pub link: Option<Vec<u8>>,
    pub kind: Kind,
    /// Data bytes (a GNU sparse file's expanded size).
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub mtime: Time,
    pub atime: Time,
    /// `SCHILY.xattr.*` records, prefix removed.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// Major and minor numbers of a device.
    pub device: (u32, u32),
}

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Reads and validates the entry's header and PAX records. Reads no file data.
pub fn describe<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Described, ArchiveError> {
    let raw_name = entry.path_bytes().into_owned();
    let shown = display(&raw_name);
    let invalid = |reason: String| ArchiveError::Invalid(format!("entry {shown:?}: {reason}"));

    if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
        return Ok(Described {
            name: raw_name,
            link: None,
            kind: Kind::GlobalHeader,
            size: entry.size(),
            uid: 0,
            gid: 0,
            mode: 0,
            mtime: Time::default(),
            atime: Time::default(),
            xattrs: Vec::new(),
            device: (0, 0),
        });
    }

    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(ArchiveError::Read)? {
        for record in records {
            let record = record.map_err(|_| {
                invalid(
                    "a PAX record cannot be framed (a value holding a newline?), so its header \
                     may be misread; refused"
                        .into(),
                )
            })?;
            pax.push((record.key_bytes().to_vec(), record.value_bytes().to_vec()));
        }
    }
    let mut seen = HashSet::new();
    for (key, _) in &pax {
        if !seen.insert(key.as_slice()) {
            return Err(invalid(format!("duplicate PAX record {:?}", display(key))));
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err(invalid("PAX sparse files are not supported".into()));
        }
    }
    let record = |key: &[u8]| {
        pax.iter()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, v)| v.as_slice())
    };
    let number = |key: &str| -> Result<Option<u64>, ArchiveError> {
        record(key.as_bytes())
            .map(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| invalid(format!("PAX {key} {:?} is not a number", display(v))))
            })
            .transpose()
    };

    let name = match go17_prefix(entry.header()) {
        Some(prefix)
            if record(b"path").is_none() && raw_name == entry.header().path_bytes().as_ref() =>
        {
            [prefix, b"/".to_vec(), raw_name.clone()].concat()
        }
        _ => raw_name.clone(),
    };
    let kind = match entry.header().entry_type() {
        // A V7 regular file ('\0') named with a trailing slash is a directory (Go, GNU tar).
        tar::EntryType::Regular
            if entry.header().as_old().linkflag[0] == 0 && name.ends_with(b"/") =>
        {
            Kind::Dir
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            Kind::File
        }
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::Hardlink,
        tar::EntryType::Char => Kind::CharDevice,
        tar::EntryType::Block => Kind::BlockDevice,
        tar::EntryType::Fifo => Kind::Fifo,
        other => {
            return Err(invalid(format!(
                "unsupported entry type {:?}",
                char::from(other.as_byte())
            )))
        }
    };

    let size = entry.size();
    if let Some(pax_size) = number("size")? {
        if pax_size != size {
            return Err(invalid(format!(
                "PAX size {pax_size} differs from the {size} bytes the parser framed"
            )));
        }
    }
    if kind.header_only() && size != 0 {
        return Err(invalid(format!(
            "a {kind:?} entry carries {size} data bytes; parsers disagree on skipping them"
        )));
    }

    if let Some(path) = record(b"path") {
        if path != raw_name.as_slice() {
            return Err(invalid(format!(
                "PAX path {:?} conflicts with the name the parser used (a GNU long name?)",
                display(path)
            )));
        }
    }
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    if let Some(linkpath) = record(b"linkpath") {
        if Some(linkpath) != link.as_deref() {
            return Err(invalid(format!(
                "PAX linkpath {:?} conflicts with the link name the parser used",
                display(linkpath)
            )));
        }
    }

    let header = entry.header();
    let old = header.as_old();
    let field = |what: &str, e: std::io::Error| invalid(format!("bad {what} field: {e}"));
    let id = |what: &str, value: u64, pax: Option<u64>| -> Result<u32, ArchiveError> {
        if pax.is_some_and(|p| p != value) {
            return Err(invalid(format!("PAX {what} differs from the parsed one")));
        }
        // u32::MAX is -1, "leave unchanged", to chown.
        u32::try_from(value)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| invalid(format!("{what} {value} is out of range")))
    };
    let uid = id(
        "uid",
        numeric(header.uid(), &old.uid).map_err(|e| field("uid", e))?,
        number("uid")?,
    )?;
    let gid = id(
        "gid",
        numeric(header.gid(), &old.gid).map_err(|e| field("gid", e))?,
        number("gid")?,
    )?;
    let mode = (numeric(header.mode().map(u64::from), &old.mode).map_err(|e| field("mode", e))?
        & 0o7777) as u32;

    let mtime = match record(b"mtime") {
        Some(v) => pax_time(v).ok_or_else(|| invalid("bad PAX mtime".into()))?,
        None => Time {
            secs: i64::try_from(
                numeric(header.mtime(), &old.mtime).map_err(|e| field("mtime", e))?,
            )
            .unwrap_or(i64::MAX),
            nanos: 0,
        },
    };
    // containerd sets atime to the later of atime and mtime.
    let atime = match record(b"atime") {
        Some(v) => pax_time(v)
            .ok_or_else(|| invalid("bad PAX atime".into()))?
            .max(mtime),
        None => mtime,
    };

    let mut xattrs = Vec::new();
    for (key, value) in &pax {
        if let Some(attr) = key.strip_prefix(XATTR_PREFIX) {
            if attr.is_empty() || attr.contains(&0) {
                return Err(invalid(format!("bad xattr name {:?}", display(attr))));
            }
            xattrs.push((OsString::from_vec(attr.to_vec()), value.clone()));
        }
    }

    let device =
        if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            // Both ustar and GNU headers keep the numbers at offsets 329 and 337.
            let raw = header.as_bytes();
            let major = header.device_major().transpose().map(|r| {
                numeric(r.map(u64::from), &raw[329..337]).map_err(|e| field("devmajor", e))
            });
            let minor = header.device_minor().transpose().map(|r| {
                numeric(r.map(u64::from), &raw[337..345]).map_err(|e| field("devminor", e))
            });
            let number =
                |n: u64| u32::try_from(n).map_err(|_| invalid("device number out of range".into()));
            match (major, minor) {
                (Some(major), Some(minor)) => (number(major?)?, number(minor?)?),
                _ => return Err(invalid("a device entry without device numbers".into())),
            }
        } else {
            (0, 0)
        };

    Ok(Described {
        name,
        link,
        kind,
        size,
        uid,
        gid,
        mode,
        mtime: bound(mtime),
        atime: bound(atime),
        xattrs,
        device,
    })
}

/// A numeric header field as Go and GNU tar read it: all NULs or spaces is zero (the crate
/// calls it malformed).
fn numeric(parsed: std::io::Result<u64>, raw: &[u8]) -> std::io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// Go before 1.8 wrote a ustar prefix into GNU headers, where atime and ctime live. Go still
/// reads such names (golang.org/issue/12594, containerd `TestPrefixHeaderReadable`, T24): if
/// those fields don't parse as numbers and the prefix is ASCII, the prefix is the name's
/// directory. Old Docker images have such layers, so we read them as Go (Dagger) does.
fn go17_prefix(header: &tar::Header) -> Option<Vec<u8>> {
    let gnu = header.as_gnu()?;
    let parses = |field: &[u8]| {
        if field.first().is_none_or(|b| *b == 0 || b & 0x80 != 0) {
            return true;
        }
        let trimmed: &[u8] = {
            let start = field.iter().position(|b| *b != 0 && *b != b' ');
            let end = field.iter().rposition(|b| *b != 0 && *b != b' ');
            match (start, end) {
                (Some(s), Some(e)) => &field[s..=e],
                _ => &[],
            }
        };
        trimmed.iter().all(|b| (b'0'..=b'7').contains(b))
    };
    if parses(&gnu.atime) && parses(&gnu.ctime) {
        return None;
    }
    let raw = header.as_bytes().get(345..500)?;
    let prefix = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
    (!prefix.is_empty() && prefix.is_ascii()).then(|| prefix.to_vec())
}

/// Times before the epoch or past what Go's time can hold become the epoch, as containerd's
/// `boundTime` does, so both produce the same tree.
fn bound(t: Time) -> Time {
    const MAX: Time = Time {
        secs: 9_223_372_036,
        nanos: 854_775_807,
    };
    if t.secs < 0 || t > MAX {
        Time::default()
    } else {
        t
    }
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn pax_time(value: &[u8]) -> Option<Time> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let digits = frac.get(..frac.len().min(9)).unwrap_or("");
    let nanos: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    if negative {
        // Before the epoch: bound() turns it into the epoch anyway.
        return Some(Time {
            secs: -secs - i64::from(nanos > 0),
            nanos: if nanos > 0 { 1_000_000_000 - nanos } else { 0 },
        });
    }
    Some(Time { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions() {
        let t = |s: &str| pax_time(s.as_bytes());
        assert_eq!(
            t("1700000000.5"),
            Some(Time {
                secs: 1_700_000_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            t("12.123456789123"),
            Some(Time {
                secs: 12,
                nanos: 123_456_789
            })
        );
        assert_eq!(t("7"), Some(Time { secs: 7, nanos: 0 }));
        assert_eq!(
            t("-1.25"),
            Some(Time {
                secs: -2,
                nanos: 750_000_000
            })
        );
        for bad in ["", ".5", "1e9", "1.2.3", "abc", "99999999999999999999"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(bound(t("-1").unwrap()), Time::default());
        assert_eq!(
            bound(Time {
                secs: i64::MAX,
                nanos: 0
            }),
            Time::default()
        );
    }
}
