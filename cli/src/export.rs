//! Exports: `Directory.export`, `File.export` (and what builds on them) write on *this*
//! machine, relative to the session's working directory.
//!
//! The engine announces an export on the session channel (`{"type":"export","n":..}`); the
//! CLI downloads the tar (`GET /sessions/<id>/exports/<n>`), writes it, and reports the outcome
//! (`POST /sessions/<id>/exports/<n>` with `{"path"}` or `{"error"}`), which becomes the
//! GraphQL answer.
//!
//! The tar comes from the engine, which may be remote: it is checked as untrusted input.
//! Entries are extracted only inside the destination: absolute names, `..`, links pointing out
//! of the exported tree, hard links, devices, fifos and set-id bits are refused, and nothing
//! is ever written through a symlink. Everything is first extracted into a private temporary
//! directory next to the destination and then moved into place, so a failed export leaves
//! the destination as it was.

use crate::client::Endpoint;
use crate::progress::Progress;
use anyhow::{bail, Context as _};
use http_body_util::BodyExt as _;
use serde_json::Value;
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// What the engine asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub n: u64,
    pub kind: Kind,
    pub path: String,
    /// The exported file's own name (for `allowParentDirPath`).
    pub name: String,
    pub wipe: bool,
    pub allow_parent_dir_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

impl Request {
    pub fn parse(v: &Value) -> anyhow::Result<Request> {
        let kind = match v["kind"].as_str() {
            Some("directory") => Kind::Directory,
            Some("file") => Kind::File,
            other => bail!("unknown export kind {other:?}"),
        };
        Ok(Request {
            n: v["n"].as_u64().context("export without a number")?,
            kind,
            path: v["path"]
                .as_str()
                .context("export without a path")?
                .to_string(),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            wipe: v["wipe"].as_bool().unwrap_or(false),
            allow_parent_dir_path: v["allowParentDirPath"].as_bool().unwrap_or(false),
        })
    }
}

/// Carries out one export event and reports its outcome to the engine.
pub async fn serve(endpoint: Endpoint, session: String, event: Value, progress: Arc<Progress>) {
    let Ok(request) = Request::parse(&event) else {
        eprintln!("dagger: ignoring a malformed export request from the engine: {event}");
        return;
    };
    let outcome = match run(&endpoint, &session, &request).await {
        Ok(path) => {
            progress.note(&format!("exported to {}", path.display()));
            serde_json::json!({ "path": path.to_string_lossy() })
        }
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    };
    let posted = crate::session::engine_request(
        &endpoint,
        hyper::Method::POST,
        &format!("/sessions/{session}/exports/{}", request.n),
        &[("content-type", "application/json")],
        outcome.to_string().into_bytes(),
    )
    .await;
    match posted {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => eprintln!(
            "dagger: the engine did not take the outcome of export {} (HTTP {})",
            request.n,
            resp.status()
        ),
        Err(e) => eprintln!(
            "dagger: cannot report the outcome of export {}: {e:#}",
            request.n
        ),
    }
}

async fn run(endpoint: &Endpoint, session: &str, request: &Request) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let target = destination(&cwd, &request.path)?;
    let resp = crate::session::engine_request(
        endpoint,
        hyper::Method::GET,
        &format!("/sessions/{session}/exports/{}", request.n),
        &[],
        Vec::new(),
    )
    .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        bail!(
            "cannot download the export from the engine (HTTP {status}): {}",
            body.map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        );
    }
    // The body streams into the extraction, which runs on a blocking thread.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<hyper::body::Bytes, String>>(8);
    let request = request.clone();
    let write = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: hyper::body::Bytes::new(),
        };
        match request.kind {
            Kind::Directory => write_directory(&target, request.wipe, reader).map(|()| target),
            Kind::File => write_file(
                &target,
                &request.name,
                request.allow_parent_dir_path,
                reader,
            )
            .map(|_| target),
        }
    });
    let mut body = resp.into_body();
    loop {
        let item = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue,
            },
            Some(Err(e)) => Err(format!("the export download broke: {e}")),
            None => break,
        };
        let failed = item.is_err();
        // A closed channel means the writer stopped (it reports why).
        let tx2 = tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx2.send(item).is_ok())
            .await
            .unwrap_or(false);
        if !sent || failed {
            break;
        }
    }
    drop(tx);
    write.await.context("the export writer stopped")?
}

/// Feeds the downloaded chunks to a blocking reader; a transfer error becomes a read error.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Result<hyper::body::Bytes, String>>,
    current: hyper::body::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.current = b,
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// The absolute, lexically clean destination for `path` (relative to `cwd`).
pub fn destination(cwd: &Path, path: &str) -> anyhow::Result<PathBuf> {
    if path.is_empty() {
        bail!("the export path is empty");
    }
    if path.contains('\0') {
        bail!("the export path contains a NUL byte");
    }
    let joined = cwd.join(path);
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// A random suffix for temporary names.
fn random_suffix() -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        b.copy_from_slice(&t.to_le_bytes()[..8]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Mode bits kept from the tar: permissions and sticky, never set-uid/set-gid.
const MODE_MASK: u32 = 0o1777;

/// The relative path of a tar entry, checked: no absolute names, no `..`, nothing empty.
fn entry_path(raw: &[u8]) -> anyhow::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let shown = String::from_utf8_lossy(raw);
    if raw.contains(&0) {
        bail!("refusing the entry {shown:?}: NUL byte in its name");
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("refusing the entry {shown:?}: absolute names are not allowed")
            }
            Component::ParentDir => bail!("refusing the entry {shown:?}: `..` is not allowed"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("refusing an entry with an empty name");
    }
    Ok(out)
}

/// Whether a symlink at `link` (relative to the export root) pointing at `target` stays
/// inside the exported tree.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() || target.as_os_str().is_empty() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Makes sure every directory on the way to `rel` inside `root` is a real directory (created
/// when missing), never a symlink.
fn ensure_parents(root: &Path, rel: &Path) -> anyhow::Result<()> {
    let mut cur = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "refusing to write below {}: it is not a directory in the export",
                cur.strip_prefix(root).unwrap_or(&cur).display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).with_context(|| format!("creating {}", cur.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", cur.display())),
        }
    }
    Ok(())
}

/// Removes whatever non-directory is at `path` (never following it).
fn clear_spot(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => bail!("the export has two entries named {}", path.display()),
        Ok(_) => {
            std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))
        }
        Err(_) => Ok(()),
    }
}

fn set_mtime(file: &std::fs::File, mtime: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    let _ = file.set_modified(t);
}

/// Extracts a tar into `root` (a fresh, private directory) under the rules in the module doc.
pub fn extract(root: &Path, tar: impl Read) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(tar);
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().context("reading the export")? {
        let mut entry = entry.context("reading the export")?;
        let rel = entry_path(&entry.path_bytes())?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & MODE_MASK;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        ensure_parents(root, &rel)?;
        let dest = root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        clear_spot(&dest)?;
                        std::fs::create_dir(&dest)
                            .with_context(|| format!("creating {}", rel.display()))?;
                    }
                    Err(_) => std::fs::create_dir(&dest)
                        .with_context(|| format!("creating {}", rel.display()))?,
                }
                dirs.push((dest, mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear_spot(&dest)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .with_context(|| format!("creating {}", rel.display()))?;
                std::io::copy(&mut entry, &mut f)
                    .with_context(|| format!("writing {}", rel.display()))?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("setting the mode of {}", rel.display()))?;
                set_mtime(&f, mtime);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .context("reading a link target")?
                    .context("a symlink without a target")?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    bail!(
                        "refusing the symlink {} -> {}: it points outside the exported tree",
                        rel.display(),
                        target.display()
                    );
                }
                clear_spot(&dest)?;
                std::os::unix::fs::symlink(&target, &dest)
                    .with_context(|| format!("creating the symlink {}", rel.display()))?;
            }
            tar::EntryType::Link => bail!("refusing the hard link {}", rel.display()),
            other => bail!(
                "refusing {} ({}): only files, directories and symlinks are exported",
                rel.display(),
                describe(other)
            ),
        }
    }
    // Deepest first, so a read-only directory does not stop its children.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode) in dirs {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(())
}

fn describe(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Fifo => "a fifo",
        _ => "an unsupported entry type",
    }
}

/// A private temporary directory next to `target` (same filesystem, so renames work).
fn staging_for(target: &Path) -> anyhow::Result<PathBuf> {
    let parent = target
        .parent()
        .context("cannot export to the filesystem root")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.dagger-export-{}", random_suffix()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    Ok(staging)
}

/// `Directory.export`: the tree at `target`, merged with what is there, or replacing it
/// exactly with `wipe`.
pub fn write_directory(target: &Path, wipe: bool, tar: impl Read) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symlink; export to the directory it points to instead",
            target.display()
        ),
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", target.display()),
        _ => {}
    }
    let staging = staging_for(target)?;
    let result = extract(&staging, tar).and_then(|()| {
        if std::fs::symlink_metadata(target).is_err() {
            std::fs::rename(&staging, target)
                .with_context(|| format!("moving the export into {}", target.display()))
        } else {
            merge(&staging, target, wipe)
        }
    });
    if std::fs::symlink_metadata(&staging).is_ok() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Moves everything in `src` into `dst` (both real directories), replacing what is in the
/// way; with `wipe`, removes from `dst` what `src` does not have.
fn merge(src: &Path, dst: &Path, wipe: bool) -> anyhow::Result<()> {
    let mut names: HashSet<OsString> = HashSet::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        names.insert(name.clone());
        let s = src.join(&name);
        let d = dst.join(&name);
        let sm = std::fs::symlink_metadata(&s)?;
        let dm = std::fs::symlink_metadata(&d).ok();
        match dm {
            Some(dm) if sm.is_dir() && dm.is_dir() => {
                merge(&s, &d, wipe)?;
                std::fs::set_permissions(&d, sm.permissions())
                    .with_context(|| format!("setting the mode of {}", d.display()))?;
                continue;
            }
            Some(dm) if dm.is_dir() => {
                std::fs::remove_dir_all(&d).with_context(|| format!("replacing {}", d.display()))?
            }
            // A directory cannot be renamed over a file or link; a file can.
            Some(_) if sm.is_dir() => {
                std::fs::remove_file(&d).with_context(|| format!("replacing {}", d.display()))?
            }
            _ => {}
        }
        std::fs::rename(&s, &d).with_context(|| format!("writing {}", d.display()))?;
    }
    if wipe {
        for entry in std::fs::read_dir(dst).with_context(|| format!("reading {}", dst.display()))? {
            let entry = entry?;
            if names.contains(&entry.file_name()) {
                continue;
            }
            let p = entry.path();
            let m = std::fs::symlink_metadata(&p)?;
            if m.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("wiping {}", p.display()))?;
        }
    }
    Ok(())
}

/// `File.export`: the tar's single file at `target`, or inside it when it is a directory and
/// `allow_parent_dir_path` is set. Returns where the file was written.
pub fn write_file(
    target: &Path,
    name: &str,
    allow_parent_dir_path: bool,
    tar: impl Read,
) -> anyhow::Result<PathBuf> {
    let mut dest = target.to_path_buf();
    if std::fs::metadata(target).is_ok_and(|m| m.is_dir()) {
        if !allow_parent_dir_path {
            bail!(
                "{} is a directory; export the file to a file path, or set allowParentDirPath to write it into that directory",
                target.display()
            );
        }
        let name = entry_path(name.as_bytes())?;
        if name.components().count() != 1 {
            bail!("invalid file name {name:?}");
        }
        dest = target.join(name);
    }
    if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
        bail!("{} is a directory", dest.display());
    }
    let staging = staging_for(&dest)?;
    let result = (|| -> anyhow::Result<()> {
        extract(&staging, tar)?;
        let mut entries = std::fs::read_dir(&staging)?.collect::<Result<Vec<_>, _>>()?;
        if entries.len() != 1 {
            bail!("the engine sent {} entries for one file", entries.len());
        }
        let only = entries.remove(0).path();
        if !std::fs::symlink_metadata(&only)?.is_file() {
            bail!("the engine did not send a regular file");
        }
        std::fs::rename(&only, &dest).with_context(|| format!("writing {}", dest.display()))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name, type, data, link target, mode.
    type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>, u32);

    fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            // Written raw, so hostile names reach the extractor as they are.
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..path.len()].copy_from_slice(path.as_bytes());
                if let Some(l) = link {
                    gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
                }
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const F: tar::EntryType = tar::EntryType::Regular;
    const D: tar::EntryType = tar::EntryType::Directory;
    const L: tar::EntryType = tar::EntryType::Symlink;

    #[test]
    fn destinations_are_absolute_and_clean() {
        let cwd = Path::new("/work/x");
        assert_eq!(destination(cwd, "out").unwrap(), Path::new("/work/x/out"));
        assert_eq!(
            destination(cwd, "./a/../b/").unwrap(),
            Path::new("/work/x/b")
        );
        assert_eq!(destination(cwd, "/abs/p").unwrap(), Path::new("/abs/p"));
        assert!(destination(cwd, "").is_err());
    }

    #[test]
    fn a_directory_is_written_merged_and_wiped() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let t = tar_of(&[
            ("sub", D, b"", None, 0o755),
            ("sub/a.txt", F, b"alpha", None, 0o640),
            ("run.sh", F, b"#!/bin/sh\n", None, 0o4755),
            ("link", L, b"", Some("sub/a.txt"), 0o777),
        ]);
        write_directory(&out, false, &t[..]).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("sub/a.txt")).unwrap(),
            "alpha"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&out.join("sub/a.txt")), 0o640);
        assert_eq!(mode(&out.join("run.sh")), 0o755, "set-uid is dropped");
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("sub/a.txt")
        );

        // Merge keeps what was there; wipe removes it.
        std::fs::write(out.join("keep.txt"), "mine").unwrap();
        let t2 = tar_of(&[("sub/a.txt", F, b"beta", None, 0o644)]);
        write_directory(&out, false, &t2[..]).unwrap();
        assert!(out.join("keep.txt").exists());
        assert!(out.join("run.sh").exists());
        assert_eq!(
            std::fs::read_to_string(out.join("sub/a.txt")).unwrap(),
            "beta"
        );
        write_directory(&out, true, &t2[..]).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["sub"]);
        // No temporary directory is left next to it.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn hostile_entries_are_refused_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("before.txt"), "old").unwrap();
        let victim = tmp.path().join("victim");
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[("../victim", F, b"x", None, 0o644)]),
            tar_of(&[("/tmp/victim-abs", F, b"x", None, 0o644)]),
            tar_of(&[
                ("ok.txt", F, b"x", None, 0o644),
                ("a/../../victim", F, b"x", None, 0o644),
            ]),
            tar_of(&[("esc", L, b"", Some("../victim"), 0o777)]),
            tar_of(&[("abs", L, b"", Some("/etc/passwd"), 0o777)]),
            // A link to a directory inside, then a write through it: refused as well.
            tar_of(&[
                ("d", D, b"", None, 0o755),
                ("l", L, b"", Some("d"), 0o777),
                ("l/x", F, b"x", None, 0o644),
            ]),
            tar_of(&[("hard", tar::EntryType::Link, b"", Some("before.txt"), 0o644)]),
            tar_of(&[("dev", tar::EntryType::Char, b"", None, 0o644)]),
            tar_of(&[("fifo", tar::EntryType::Fifo, b"", None, 0o644)]),
        ];
        for (i, t) in cases.iter().enumerate() {
            let err = write_directory(&out, true, &t[..]);
            assert!(err.is_err(), "case {i} was accepted");
            assert!(!victim.exists(), "case {i} wrote outside");
            assert!(!Path::new("/tmp/victim-abs").exists());
            let names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["before.txt"], "case {i} changed the destination");
            let left = std::fs::read_dir(tmp.path()).unwrap().count();
            assert_eq!(left, 1, "case {i} left a temporary directory");
        }
    }

    #[test]
    fn a_file_goes_to_its_path_or_into_a_directory_when_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tar_of(&[("report.txt", F, b"data", None, 0o600)]);
        let dest =
            write_file(&tmp.path().join("a/b/out.txt"), "report.txt", false, &t[..]).unwrap();
        assert_eq!(dest, tmp.path().join("a/b/out.txt"));
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "data");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let dir = tmp.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        let err = write_file(&dir, "report.txt", false, &t[..]).unwrap_err();
        assert!(format!("{err:#}").contains("allowParentDirPath"), "{err:#}");
        let dest = write_file(&dir, "report.txt", true, &t[..]).unwrap();
        assert_eq!(dest, dir.join("report.txt"));

        // A symlink at the destination is replaced, not followed.
        let elsewhere = tmp.path().join("elsewhere.txt");
        std::fs::write(&elsewhere, "untouched").unwrap();
        let link = tmp.path().join("link.txt");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        write_file(&link, "report.txt", false, &t[..]).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    }
}
