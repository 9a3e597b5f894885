//! Layer-apply tests: the T1-T25 cases of docs anchors C.5 (containerd `TestBreakouts` and the
//! Rust tar advisories) plus round trips. They run as root: they chown, mknod and set
//! `trusted.*`/`security.*` xattrs. Every case applies into `root/` of a sandbox whose sibling
//! `outside/` holds canaries, and checks they didn't change.

use super::entry::{self, Kind};
use super::*;
use crate::sys::fsops::{self, FileKind};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Building tars by hand, so malicious headers are possible.

const MTIME: u64 = 1_600_000_000;

#[derive(Clone)]
struct Spec<'a> {
    kind: u8,
    name: &'a [u8],
    link: &'a [u8],
    data: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    dev: (u32, u32),
}

impl<'a> Spec<'a> {
    fn new(kind: u8, name: &'a str) -> Self {
        Spec {
            kind,
            name: name.as_bytes(),
            link: b"",
            data: b"",
            mode: if kind == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: MTIME,
            dev: (0, 0),
        }
    }
}

#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn new() -> Self {
        Tar::default()
    }

    fn block(&mut self, header: &tar::Header, data: &[u8]) {
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn gnu_long(&mut self, kind: u8, value: &[u8]) {
        let mut data = value.to_vec();
        data.push(0);
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.block(&h, &data);
    }

    /// One entry; names and targets over 100 bytes get GNU long name/link records.
    fn spec(&mut self, s: Spec<'_>) -> &mut Self {
        if s.name.len() > 100 {
            self.gnu_long(b'L', s.name);
        }
        if s.link.len() > 100 {
            self.gnu_long(b'K', s.link);
        }
        let mut h = tar::Header::new_gnu();
        let n = s.name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&s.name[..n]);
        let l = s.link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&s.link[..l]);
        h.set_entry_type(tar::EntryType::new(s.kind));
        h.set_size(s.data.len() as u64);
        h.set_mode(s.mode);
        h.set_uid(s.uid);
        h.set_gid(s.gid);
        h.set_mtime(s.mtime);
        if matches!(s.kind, b'3' | b'4') {
            h.set_device_major(s.dev.0).unwrap();
            h.set_device_minor(s.dev.1).unwrap();
        }
        h.set_cksum();
        self.block(&h, s.data);
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.spec(Spec {
            data,
            ..Spec::new(b'0', name)
        })
    }

    fn file_mode(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.spec(Spec {
            data,
            mode,
            ..Spec::new(b'0', name)
        })
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.spec(Spec {
            mode,
            ..Spec::new(b'5', name)
        })
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.spec(Spec {
            link: target.as_bytes(),
            mode: 0o777,
            ..Spec::new(b'2', name)
        })
    }

    fn link(&mut self, name: &str, target: &str) -> &mut Self {
        self.spec(Spec {
            link: target.as_bytes(),
            ..Spec::new(b'1', name)
        })
    }

    /// A PAX extended header for the next entry, records encoded as given (even malformed).
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend(pax_record(key.as_bytes(), value));
        }
        self.pax_raw(&data)
    }

    fn pax_raw(&mut self, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..11].copy_from_slice(b"PaxHeader/x");
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.block(&h, data);
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend([0u8; 1024]);
        out
    }
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

// ---------------------------------------------------------------------------------------------
// A sandbox: `root/` for the layer, `outside/` for canaries an escape would touch.

struct Sandbox {
    tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("etc")).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::create_dir_all(outside.join("tmp")).unwrap();
        fs::write(outside.join("etc/passwd"), "host passwd").unwrap();
        fs::write(outside.join("etc/whitedout"), "host").unwrap();
        fs::write(outside.join("canary"), "canary").unwrap();
        fs::set_permissions(outside.join("dir"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(outside.join("canary"), fs::Permissions::from_mode(0o400)).unwrap();
        let mut sb = Sandbox {
            tmp,
            root,
            outside,
            before: BTreeMap::new(),
        };
        sb.before = sb.snapshot();
        sb
    }

    /// The outside tree's every detail, to compare after the apply.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.outside.clone()];
        while let Some(p) = todo.pop() {
            let m = fs::symlink_metadata(&p).unwrap();
            let extra = if m.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
                String::new()
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            };
            out.insert(
                p.clone(),
                format!(
                    "{:o} {}:{} n{} ino{} m{} {extra}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.nlink(),
                    m.ino(),
                    m.mtime()
                ),
            );
        }
        out
    }

    /// Nothing outside the root changed and nothing new appeared next to it.
    fn assert_outside_untouched(&self) {
        assert_eq!(self.snapshot(), self.before, "the outside tree changed");
        let mut siblings: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        siblings.sort();
        assert_eq!(
            siblings,
            ["outside", "root"],
            "something appeared next to the root"
        );
    }

    fn r(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn apply(&self, tar: &[u8]) -> Result<Applied, ArchiveError> {
        apply_layer(&self.root, tar, &ApplyOptions::default())
    }

    fn apply_with(&self, tar: &[u8], opts: &ApplyOptions) -> Result<Applied, ArchiveError> {
        apply_layer(&self.root, tar, opts)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.r(rel)).unwrap()
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.r(rel)).is_ok()
    }

    fn ino(&self, rel: &str) -> u64 {
        fs::symlink_metadata(self.r(rel)).unwrap().ino()
    }

    /// The absolute path of `outside/rel`, for symlinks that try to reach it.
    fn out(&self, rel: &str) -> String {
        self.outside.join(rel).display().to_string()
    }
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let f = fs::File::open(path).unwrap();
    fsops::get_xattr(f.as_fd(), OsStr::new(key)).unwrap()
}

fn assert_invalid(result: Result<Applied, ArchiveError>) -> String {
    let err = result.expect_err("the archive should be refused");
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "wrong classification: {err}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("invalid archive"), "{msg}");
    msg
}

// ---------------------------------------------------------------------------------------------
// T1, T2: symlinked parents resolve inside the root.

#[test]
fn t01_absolute_symlink_parent_stays_in_root() {
    let sb = Sandbox::new();
    let out_etc = sb.out("etc");
    let tar = Tar::new()
        .dir("etc", 0o755)
        .symlink("localetc", "/etc")
        .file("/localetc/unbroken", b"unbroken")
        .symlink("hostout", &out_etc)
        .file("hostout/unbroken", b"inside too")
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(sb.read("etc/unbroken"), "unbroken");
    assert_eq!(sb.read(&format!("{out_etc}/unbroken")), "inside too");
    assert!(!Path::new("/etc/unbroken").exists());
    sb.assert_outside_untouched();
}

#[test]
fn t02_dotdot_symlinks_stay_in_root() {
    for (name, layer) in [
        (
            "SymlinkUpAndOut",
            Tar::new()
                .dir("etc", 0o755)
                .dir("dummy", 0o755)
                .symlink("localetc", "/dummy/../etc")
                .file("/localetc/unbroken", b"unbroken")
                .finish(),
        ),
        (
            "SymlinkMultipleAbsolute",
            Tar::new()
                .dir("etc", 0o755)
                .dir("dummy", 0o755)
                .symlink("/dummy/etc", "/etc")
                .symlink("localetc", "/dummy/etc")
                .file("/dummy/etc/unbroken", b"unbroken")
                .finish(),
        ),
        (
            "SymlinkMultipleRelative",
            Tar::new()
                .dir("etc", 0o755)
                .dir("dummy", 0o755)
                .symlink("/dummy/etc", "/etc")
                .symlink("localetc", "./dummy/etc")
                .file("/localetc/unbroken", b"unbroken")
                .finish(),
        ),
        (
            "RelativeOut",
            Tar::new()
                .dir("etc", 0o755)
                .symlink("localetc", "../../../../etc")
                .file("localetc/unbroken", b"unbroken")
                .symlink("sibling", "../outside/etc")
                .file("sibling/passwd", b"inside")
                .finish(),
        ),
    ] {
        let sb = Sandbox::new();
        sb.apply(&layer).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sb.read("etc/unbroken"), "unbroken", "{name}");
        sb.assert_outside_untouched();
    }
    // SymlinkEmptyFile: a file through a symlinked parent replaces the one inside.
    let sb = Sandbox::new();
    let tar = Tar::new()
        .dir("etc", 0o755)
        .file("etc/emptied", b"notempty")
        .symlink("localetc", "/etc")
        .file("/localetc/emptied", b"")
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(sb.read("etc/emptied"), "");
    sb.assert_outside_untouched();
}

// ---------------------------------------------------------------------------------------------
// T3, T4, T5: hardlinks resolve inside the root.

fn passwd_layer() -> Tar {
    let mut t = Tar::new();
    t.dir("etc", 0o770).file("/etc/passwd", b"inside");
    t
}

#[test]
fn t03_hardlink_through_symlinked_dirs_links_inside() {
    for (name, d1) in [
        ("HardlinkRelative", "../../etc"),
        ("HardlinkDownAndOut", "../downandout/../../etc"),
    ] {
        let sb = Sandbox::new();
        let tar = passwd_layer()
            .dir("breakouts", 0o755)
            .dir("downandout", 0o755)
            .symlink("breakouts/d1", d1)
            .link("breakouts/mypasswd", "/breakouts/d1/passwd")
            .finish();
        sb.apply(&tar).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sb.ino("breakouts/mypasswd"), sb.ino("etc/passwd"), "{name}");
        assert_ne!(
            sb.ino("breakouts/mypasswd"),
            fs::metadata("/etc/passwd").unwrap().ino()
        );
        sb.assert_outside_untouched();
    }
    // A symlink that would reach the sibling passwd resolves to a missing path inside.
    let sb = Sandbox::new();
    let tar = Tar::new()
        .symlink("d1", "../outside/etc")
        .link("mypasswd", "d1/passwd")
        .finish();
    assert!(assert_invalid(sb.apply(&tar)).contains("does not exist"));
    sb.assert_outside_untouched();
}

#[test]
fn t04_hardlink_targets_with_dotdot_or_absolute_paths_link_inside() {
    for (name, tar) in [
        (
            "HardlinkDirectRelative",
            passwd_layer()
                .link("localpasswd", "../../../../../etc/passwd")
                .finish(),
        ),
        (
            "HardlinkDirectAbsolute",
            passwd_layer().link("localpasswd", "/etc/passwd").finish(),
        ),
        (
            "HardlinkAbsolute",
            passwd_layer()
                .symlink("localetc", "/etc")
                .link("localpasswd", "/localetc/passwd")
                .finish(),
        ),
        (
            "HardlinkRelativeLong",
            passwd_layer()
                .symlink("localetc", "../../../../../../../etc")
                .link("localpasswd", "/localetc/passwd")
                .finish(),
        ),
        (
            "HardlinkRelativeUpAndOut",
            passwd_layer()
                .symlink("localetc", "upandout/../../../etc")
                .link("localpasswd", "/localetc/passwd")
                .finish(),
        ),
    ] {
        let sb = Sandbox::new();
        sb.apply(&tar).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sb.ino("localpasswd"), sb.ino("etc/passwd"), "{name}");
        assert_eq!(sb.read("localpasswd"), "inside");
        sb.assert_outside_untouched();
    }
    // An absolute path to the sibling passwd is a path inside the root, and it is missing.
    let sb = Sandbox::new();
    let target = sb.out("etc/passwd");
    let tar = Tar::new().link("stolen", &target).finish();
    assert_invalid(sb.apply(&tar));
    sb.assert_outside_untouched();
}

#[test]
fn t05_symlinks_named_dotdot_or_empty_and_hardlinks_to_symlinks() {
    for (name, tar, link, target) in [
        (
            "SymlinkParentDirectory",
            passwd_layer()
                .symlink("..", "/etc/")
                .link("localpasswd", "/etc/passwd")
                .finish(),
            "localpasswd",
            "etc/passwd",
        ),
        (
            "SymlinkEmptyFilename",
            passwd_layer()
                .symlink("", "/etc/")
                .link("localpasswd", "/etc/passwd")
                .finish(),
            "localpasswd",
            "etc/passwd",
        ),
        (
            "SymlinkParentRelative",
            passwd_layer()
                .symlink("localetc/sub/..", "/etc/")
                .link("/localetc/localpasswd", "/etc/passwd")
                .finish(),
            "etc/localpasswd",
            "etc/passwd",
        ),
        (
            "SymlinkSlashEnded",
            passwd_layer()
                .dir("localetc/", 0o770)
                .link("/localetc/localpasswd", "/etc/passwd")
                .finish(),
            "localetc/localpasswd",
            "etc/passwd",
        ),
    ] {
        let sb = Sandbox::new();
        sb.apply(&tar).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sb.ino(link), sb.ino(target), "{name}");
        sb.assert_outside_untouched();
    }

    // Hardlinks to symlinks link the symlink itself (link(2) semantics, as containerd).
    for target in ["../../../../../etc/passwd", "/etc/passwd"] {
        let sb = Sandbox::new();
        let tar = passwd_layer()
            .symlink("passwdlink", target)
            .link("localpasswd", "/passwdlink")
            .finish();
        sb.apply(&tar).unwrap();
        assert_eq!(sb.ino("localpasswd"), sb.ino("passwdlink"));
        assert_eq!(
            fs::read_link(sb.r("localpasswd")).unwrap(),
            Path::new(target)
        );
        sb.assert_outside_untouched();
    }

    // HardlinkSymlinkBeforeCreateTarget
    let sb = Sandbox::new();
    let tar = Tar::new()
        .dir("etc", 0o770)
        .symlink("localpasswd", "/etc/passwd")
        .link("localpasswd-dup", "localpasswd")
        .file("/etc/passwd", b"after")
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(sb.ino("localpasswd-dup"), sb.ino("localpasswd"));

    // HardlinkSymlinkChmod: metadata on a hardlinked symlink never reaches what it points at.
    let sb = Sandbox::new();
    let canary = sb.out("canary");
    let tar = Tar::new()
        .symlink("sketchy", &canary)
        .spec(Spec {
            link: b"sketchy",
            mode: 0o777,
            uid: 4242,
            ..Spec::new(b'1', "sketchylink")
        })
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(
        fs::symlink_metadata(sb.r("sketchylink")).unwrap().uid(),
        4242
    );
    sb.assert_outside_untouched();

    // A hardlink to a directory is refused.
    let sb = Sandbox::new();
    let tar = Tar::new().dir("d", 0o755).link("l", "d").finish();
    assert!(assert_invalid(sb.apply(&tar)).contains("directory"));
}

// ---------------------------------------------------------------------------------------------
// T6, T7, T8: whiteouts.

fn populate(sb: &Sandbox) {
    fs::create_dir_all(sb.r("etc")).unwrap();
    fs::write(sb.r("etc/passwd"), "all users").unwrap();
    fs::write(sb.r("etc/whitedout"), "ahhhh whiteout").unwrap();
    std::os::unix::fs::symlink("/etc", sb.r("localetc")).unwrap();
}

#[test]
fn t06_whiteouts_of_dot_and_dotdot_are_invalid() {
    for name in [".wh..", ".wh...", "etc/.wh..", "etc/.wh...", ".wh."] {
        let sb = Sandbox::new();
        populate(&sb);
        let tar = Tar::new().file(name, b"").finish();
        let msg = assert_invalid(sb.apply(&tar));
        assert!(msg.contains("invalid whiteout"), "{name}: {msg}");
        assert_eq!(sb.read("etc/passwd"), "all users", "{name}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn t07_whiteout_of_a_symlink_removes_only_the_symlink() {
    let sb = Sandbox::new();
    populate(&sb);
    std::os::unix::fs::symlink(&sb.outside, sb.r("hostlink")).unwrap();
    let tar = Tar::new()
        .file(".wh.localetc", b"")
        .file(".wh.hostlink", b"")
        .finish();
    sb.apply(&tar).unwrap();
    assert!(!sb.exists("localetc"));
    assert!(!sb.exists("hostlink"));
    assert_eq!(sb.read("etc/passwd"), "all users");
    assert!(!sb.exists(".wh.localetc"));
    sb.assert_outside_untouched();
}

#[test]
fn t08_whiteout_through_a_symlinked_parent_stays_in_root() {
    let sb = Sandbox::new();
    populate(&sb);
    std::os::unix::fs::symlink(sb.out("etc"), sb.r("hostetc")).unwrap();
    let tar = Tar::new()
        .file("localetc/.wh.whitedout", b"")
        .file("hostetc/.wh.whitedout", b"")
        .file("hostetc/.wh.passwd", b"")
        .finish();
    sb.apply(&tar).unwrap();
    assert!(!sb.exists("etc/whitedout"));
    assert_eq!(sb.read("etc/passwd"), "all users");
    sb.assert_outside_untouched();

    // WhiteoutDeadSymlinkParent, WhiteoutRelativePath, WhiteoutDirectoryName.
    let sb = Sandbox::new();
    populate(&sb);
    fs::remove_file(sb.r("localetc")).unwrap();
    std::os::unix::fs::symlink("/dne", sb.r("localetc")).unwrap();
    sb.apply(&Tar::new().file("localetc/.wh.etc", b"").finish())
        .unwrap();
    assert_eq!(sb.read("etc/passwd"), "all users");
    sb.apply(&Tar::new().file(".wh.etc/somefile", b"non-empty").finish())
        .unwrap();
    assert_eq!(sb.read(".wh.etc/somefile"), "non-empty");
    assert_eq!(sb.read("etc/passwd"), "all users");
    sb.apply(&Tar::new().file("dne/../.wh.etc", b"").finish())
        .unwrap();
    assert!(!sb.exists("etc"));
    sb.assert_outside_untouched();
}

// ---------------------------------------------------------------------------------------------
// T9 - T12: symlinks replaced, overridden, and used as ladders.

#[test]
fn t09_symlink_override_path_keeps_every_write_in_root() {
    let sb = Sandbox::new();
    let name = format!("breakout-{}", std::process::id());
    let path = format!("foo/tmp/{name}");
    let tar = Tar::new()
        .dir("foo", 0o755)
        .dir("foo/tmp", 0o755)
        .file(&path, &[0, 1, 2])
        .symlink("foo", "/")
        .file(&path, &[3, 4, 5])
        .dir("foo", 0o755)
        .dir("foo/tmp", 0o755)
        .file(&path, &[6, 7, 8])
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(fs::read(sb.r(&path)).unwrap(), [6, 7, 8]);
    assert_eq!(fs::read(sb.r(&format!("tmp/{name}"))).unwrap(), [3, 4, 5]);
    assert!(!Path::new("/tmp").join(&name).exists());
    sb.assert_outside_untouched();
}

#[test]
fn t10_directory_entry_over_a_symlink_does_not_chmod_the_target() {
    let sb = Sandbox::new();
    let abs = sb.out("dir");
    let tar = Tar::new()
        .symlink("foo", &abs)
        .dir("foo", 0o777)
        .symlink("bar", "../outside/dir")
        .dir("bar", 0o777)
        .finish();
    sb.apply(&tar).unwrap();
    for d in ["foo", "bar"] {
        let m = fs::symlink_metadata(sb.r(d)).unwrap();
        assert!(m.is_dir(), "{d}");
        assert_eq!(m.mode() & 0o7777, 0o777, "{d}");
    }
    sb.assert_outside_untouched();
}

#[test]
fn t11_dotdot_symlink_ladder_creates_nothing_outside() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .symlink("symlink", "..")
        .file("symlink/exploit/foo/bar", b"x")
        .symlink("deep", "../../../..")
        .file("deep/exploit2", b"y")
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(sb.read("exploit/foo/bar"), "x");
    assert_eq!(sb.read("exploit2"), "y");
    sb.assert_outside_untouched();
}

#[test]
fn t12_file_over_symlink_or_hardlink_replaces_the_name_only() {
    let sb = Sandbox::new();
    let canary = sb.out("etc/passwd");
    let tar = Tar::new()
        .symlink("x", &canary)
        .file("x", b"replaced")
        .symlink("y", "../outside/canary")
        .file_mode("y", b"replaced", 0o777)
        .file("a", b"original")
        .link("b", "a")
        .file("b", b"new")
        .finish();
    sb.apply(&tar).unwrap();
    assert!(fs::symlink_metadata(sb.r("x")).unwrap().is_file());
    assert_eq!(sb.read("x"), "replaced");
    assert_eq!(sb.read("y"), "replaced");
    assert_eq!(sb.read("a"), "original");
    assert_eq!(sb.read("b"), "new");
    assert_ne!(sb.ino("a"), sb.ino("b"));
    sb.assert_outside_untouched();
}

// ---------------------------------------------------------------------------------------------
// T13: parser differentials. What we list must be what GNU tar lists, or we refuse.

/// (type, name, size) for every entry, as the applier sees them.
fn our_listing(tar: &[u8]) -> Result<Vec<(char, String, u64)>, ArchiveError> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in archive.entries().map_err(ArchiveError::Read)? {
        let mut e = e.map_err(ArchiveError::Read)?;
        let d = entry::describe(&mut e)?;
        let t = match d.kind {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Hardlink => 'h',
            Kind::CharDevice => 'c',
            Kind::BlockDevice => 'b',
            Kind::Fifo => 'p',
            Kind::GlobalHeader => continue,
        };
        out.push((t, String::from_utf8_lossy(&d.name).into_owned(), d.size));
    }
    Ok(out)
}

/// GNU tar's `-tv` listing, or `None` if GNU tar is missing or fails.
fn gnu_listing(tar: &[u8]) -> Option<Vec<(char, String, u64)>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tar");
    fs::write(&path, tar).unwrap();
    let out = Command::new("tar")
        .args(["--numeric-owner", "--quoting-style=literal", "-tvf"])
        .arg(&path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut list = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let t = f.first()?.chars().next()?;
        let size = f.get(2)?.parse().unwrap_or(0);
        let name = f.get(5)?.to_string();
        list.push((if t == 'h' { 'h' } else { t }, name, size));
    }
    Some(list)
}

#[test]
fn t13_pax_size_and_gnu_long_names_match_gnu_tar() {
    let embedded = |name: &str| {
        let mut inner = Tar::new();
        inner.file(name, b"evil");
        let mut v = inner.finish();
        v.truncate(1024);
        v
    };
    let smuggled = embedded("smuggled");
    let long = "d".repeat(120) + "/" + &"f".repeat(130);
    let long_target = "t".repeat(150);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            // TARmageddon: the PAX size is authoritative over a zero ustar size, so the fake
            // header is data.
            "pax size over ustar zero",
            Tar::new()
                .pax(&[("size", b"1024")])
                .spec(Spec {
                    data: &[],
                    ..Spec::new(b'0', "payload")
                })
                .block_raw(&smuggled)
                .file("after", b"ok")
                .finish(),
        ),
        (
            // PAX size 0 wins over the ustar size for every parser, so the block after the
            // header is the next header: visible to all, not smuggled.
            "pax size under a larger ustar size",
            {
                let mut t = Tar::new();
                t.pax(&[("size", b"0")]);
                let mut h = tar::Header::new_gnu();
                h.as_old_mut().name[..5].copy_from_slice(b"outer");
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(1024);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(MTIME);
                h.set_cksum();
                t.out.extend_from_slice(h.as_bytes());
                t.block_raw(&embedded("visible"));
                t.finish()
            },
        ),
        (
            "gnu long name and link",
            Tar::new()
                .file(&long, b"long")
                .symlink("longlink", &long_target)
                .file("tail", b"t")
                .finish(),
        ),
        (
            "pax path",
            Tar::new()
                .pax(&[("path", long.as_bytes())])
                .file("short", b"x")
                .finish(),
        ),
    ];
    let gnu_available = Command::new("tar").arg("--version").output().is_ok();
    for (name, tar) in &cases {
        let ours = our_listing(tar).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !ours.iter().any(|(_, n, _)| n == "smuggled"),
            "{name}: {ours:?}"
        );
        if gnu_available {
            let gnu = gnu_listing(tar).unwrap_or_else(|| panic!("{name}: GNU tar failed"));
            assert_eq!(ours, gnu, "{name}");
        }
        let sb = Sandbox::new();
        sb.apply(tar).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!sb.exists("smuggled"), "{name}");
        sb.assert_outside_untouched();
    }
    let sb = Sandbox::new();
    sb.apply(&cases[0].1).unwrap();
    assert_eq!(fs::read(sb.r("payload")).unwrap(), smuggled);
    assert_eq!(sb.read("after"), "ok");
    let sb = Sandbox::new();
    sb.apply(&cases[1].1).unwrap();
    assert_eq!(sb.read("outer"), "");
    assert_eq!(sb.read("visible"), "evil");
}

#[test]
fn t13_ambiguous_headers_are_refused() {
    let long = "n".repeat(150);
    let mut cap = vec![1u8, 0, 0, 2, 2, 0, 0x0a, 0];
    cap.extend([0u8; 12]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            // The crate takes the GNU long name, GNU tar the PAX path.
            "gnu long name and pax path disagree",
            Tar::new()
                .pax(&[("path", b"pax-name")])
                .file(&long, b"x")
                .finish(),
        ),
        (
            "gnu long link and pax linkpath disagree",
            Tar::new()
                .pax(&[("linkpath", b"elsewhere")])
                .symlink("l", &long)
                .finish(),
        ),
        (
            // The crate splits PAX records on newlines; it would misframe this.
            "newline in a pax value",
            Tar::new()
                .pax(&[("SCHILY.xattr.security.capability", &cap), ("size", b"512")])
                .file("f", &[7u8; 512])
                .finish(),
        ),
        (
            "fake record inside a pax value",
            Tar::new()
                .pax(&[("SCHILY.xattr.user.x", b"a\n22 linkpath=/etc/evil\n")])
                .symlink("l", "harmless")
                .finish(),
        ),
        (
            "duplicate pax keys",
            Tar::new()
                .pax(&[("path", b"first"), ("path", b"second")])
                .file("x", b"")
                .finish(),
        ),
        (
            "symlink with data",
            Tar::new()
                .spec(Spec {
                    link: b"target",
                    data: &[0u8; 512],
                    ..Spec::new(b'2', "l")
                })
                .finish(),
        ),
        (
            "directory with data",
            Tar::new()
                .spec(Spec {
                    data: &[1u8; 512],
                    ..Spec::new(b'5', "d")
                })
                .finish(),
        ),
        (
            "pax sparse",
            Tar::new()
                .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
                .file("GNUSparseFile.0/f", b"")
                .finish(),
        ),
        (
            "unsupported type",
            Tar::new().spec(Spec::new(b'V', "volume")).finish(),
        ),
        (
            "bad pax number",
            Tar::new().pax(&[("uid", b"12x")]).file("f", b"").finish(),
        ),
        (
            "uid -1",
            Tar::new()
                .spec(Spec {
                    uid: u64::from(u32::MAX),
                    ..Spec::new(b'0', "f")
                })
                .finish(),
        ),
        ("bad checksum", {
            let mut t = Tar::new().file("f", b"x").finish();
            t[0] ^= 1;
            t
        }),
        ("truncated data", {
            let mut t = Tar::new().file("f", &[5u8; 2048]).finish();
            t.truncate(1024);
            t
        }),
    ];
    for (name, tar) in cases {
        let sb = Sandbox::new();
        let msg = assert_invalid(sb.apply(&tar));
        eprintln!("{name}: {msg}");
        assert!(!sb.r("etc").exists(), "{name}");
        sb.assert_outside_untouched();
    }
}

impl Tar {
    /// Raw bytes appended as they are (already block-aligned).
    fn block_raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// T14, T15: opaque directories and overlay whiteouts.

#[test]
fn t14_opaque_marker_keeps_what_this_layer_wrote() {
    for marker_first in [false, true] {
        let sb = Sandbox::new();
        for p in ["dir/sub", "dir/deep", "dir/lowerdir/x"] {
            fs::create_dir_all(sb.r(p)).unwrap();
        }
        for p in ["dir/lower1", "dir/sub/lower2", "dir/deep/old", "keep"] {
            fs::write(sb.r(p), "lower").unwrap();
        }
        let mut t = Tar::new();
        if marker_first {
            t.file("dir/.wh..wh..opq", b"");
        }
        t.dir("dir", 0o755)
            .file("dir/new", b"new")
            .dir("dir/sub", 0o755)
            .file("dir/sub/mine", b"mine")
            .file("dir/deep/x", b"implicit parent")
            .file("dir/sub2/newer", b"newer");
        if !marker_first {
            t.file("dir/.wh..wh..opq", b"");
        }
        sb.apply(&t.finish()).unwrap();
        for kept in ["dir/new", "dir/sub/mine", "dir/sub2/newer", "keep"] {
            assert!(sb.exists(kept), "marker_first={marker_first}: {kept}");
        }
        assert_eq!(sb.read("dir/deep/x"), "implicit parent");
        for gone in [
            "dir/lower1",
            "dir/sub/lower2",
            "dir/lowerdir",
            "dir/.wh..wh..opq",
        ] {
            assert!(!sb.exists(gone), "marker_first={marker_first}: {gone}");
        }
        // Lower entries of a directory this layer only passes through are hidden too.
        if !marker_first {
            assert!(!sb.exists("dir/deep/old"));
        }
        sb.assert_outside_untouched();
    }
}

#[test]
fn t15_overlay_mode_makes_devices_and_opaque_xattrs() {
    let sb = Sandbox::new();
    let lower = sb.tmp.path().join("outside/lower");
    fs::create_dir_all(lower.join("usr/bin")).unwrap();
    fs::create_dir_all(lower.join("opaque/below")).unwrap();
    fs::write(lower.join("usr/bin/tool"), "lower tool").unwrap();
    fs::write(lower.join("opaque/gone"), "g").unwrap();
    std::os::unix::fs::chown(lower.join("usr"), Some(7), Some(8)).unwrap();
    fs::set_permissions(lower.join("usr"), fs::Permissions::from_mode(0o750)).unwrap();
    {
        let f = fs::File::open(lower.join("usr")).unwrap();
        fsops::set_xattr(f.as_fd(), OsStr::new("user.origin"), b"lower").unwrap();
    }
    let lower_usr_mtime = fs::metadata(lower.join("usr")).unwrap().mtime();
    let before = Sandbox {
        tmp: tempfile::tempdir().unwrap(),
        root: PathBuf::new(),
        outside: lower.clone(),
        before: BTreeMap::new(),
    }
    .snapshot();

    let tar = Tar::new()
        .file(".wh.foo", b"")
        .dir("d", 0o755)
        .file("d/x", b"x")
        .file("d/.wh..wh..opq", b"")
        .file("usr/bin/.wh.tool", b"")
        .file("opaque/.wh..wh..opq", b"")
        .link("usr/copy", "usr/bin/tool")
        .finish();
    let opts = ApplyOptions {
        whiteouts: WhiteoutMode::Overlay {
            lowers: vec![lower.clone()],
        },
        ..ApplyOptions::default()
    };
    let err = sb.apply_with(&tar, &opts).unwrap_err();
    // The whiteout in this layer deleted the hardlink's target.
    assert!(err.to_string().contains("was deleted"), "{err}");

    let sb = Sandbox::new();
    let tar = Tar::new()
        .file(".wh.foo", b"")
        .dir("d", 0o755)
        .file("d/x", b"x")
        .file("d/.wh..wh..opq", b"")
        .file("usr/bin/.wh.old", b"")
        .file("opaque/.wh..wh..opq", b"")
        .link("usr/copy", "usr/bin/tool")
        .file("usr/own", b"own")
        .link("usr/own-link", "/usr/own")
        .finish();
    sb.apply_with(&tar, &opts).unwrap();
    sb.assert_outside_untouched();
    assert_eq!(sb.ino("usr/own"), sb.ino("usr/own-link"));
    let foo = fs::symlink_metadata(sb.r("foo")).unwrap();
    assert!(foo.file_type().is_char_device());
    assert_eq!(foo.rdev(), 0);
    assert!(fs::symlink_metadata(sb.r("usr/bin/old"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr(&sb.r("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&sb.r("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(sb.read("d/x"), "x");
    // No marker file anywhere.
    let mut todo = vec![sb.root.clone()];
    while let Some(p) = todo.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            assert!(
                !e.file_name().to_string_lossy().starts_with(".wh."),
                "{:?}",
                e.path()
            );
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    // A parent the layer didn't list copies the lower directory's metadata.
    let usr = fs::metadata(sb.r("usr")).unwrap();
    assert_eq!((usr.mode() & 0o7777, usr.uid(), usr.gid()), (0o750, 7, 8));
    assert_eq!(usr.mtime(), lower_usr_mtime);
    assert_eq!(
        xattr(&sb.r("usr"), "user.origin").as_deref(),
        Some(&b"lower"[..])
    );
    // The hardlink to a lower file became a copy in the upper dir.
    assert_eq!(sb.read("usr/copy"), "lower tool");
    assert_eq!(
        Sandbox {
            tmp: tempfile::tempdir().unwrap(),
            root: PathBuf::new(),
            outside: lower,
            before: BTreeMap::new(),
        }
        .snapshot(),
        before,
        "the lower layer changed"
    );
}

// ---------------------------------------------------------------------------------------------
// T16 - T19: xattrs, devices, modes.

#[test]
fn t16_overlay_xattrs_from_the_layer_are_dropped() {
    for overlay in [false, true] {
        let sb = Sandbox::new();
        let opts = ApplyOptions {
            whiteouts: if overlay {
                WhiteoutMode::Overlay { lowers: vec![] }
            } else {
                WhiteoutMode::Apply
            },
            ..ApplyOptions::default()
        };
        let tar = Tar::new()
            .pax(&[
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.user.keep", b"kept"),
            ])
            .dir("d", 0o755)
            .pax(&[
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                ("SCHILY.xattr.user.overlay.opaque", b"y"),
                ("SCHILY.xattr.trusted.other", b"z"),
            ])
            .file("f", b"f")
            .finish();
        sb.apply_with(&tar, &opts).unwrap();
        assert_eq!(xattr(&sb.r("d"), "trusted.overlay.opaque"), None);
        assert_eq!(
            xattr(&sb.r("d"), "user.keep").as_deref(),
            Some(&b"kept"[..])
        );
        for key in [
            "trusted.overlay.redirect",
            "user.overlay.opaque",
            "trusted.other",
        ] {
            assert_eq!(xattr(&sb.r("f"), key), None, "{key}");
        }
        sb.assert_outside_untouched();
    }
}

#[test]
fn t17_devices_are_created_as_root() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .spec(Spec {
            dev: (1, 3),
            mode: 0o666,
            ..Spec::new(b'3', "dev/null")
        })
        .spec(Spec {
            dev: (7, 0),
            mode: 0o660,
            gid: 6,
            ..Spec::new(b'4', "dev/loop0")
        })
        .spec(Spec {
            mode: 0o620,
            ..Spec::new(b'6', "run/fifo")
        })
        .finish();
    sb.apply(&tar).unwrap();
    let null = fs::symlink_metadata(sb.r("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777), (rdev(1, 3), 0o666));
    let lp = fs::symlink_metadata(sb.r("dev/loop0")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(
        (lp.rdev(), lp.gid(), lp.mode() & 0o7777),
        (rdev(7, 0), 6, 0o660)
    );
    let fifo = fs::symlink_metadata(sb.r("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    sb.assert_outside_untouched();
}

fn rdev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

const USERNS_CHILD: &str = "DAGGER_ARCHIVE_TEST_USERNS_CHILD";

#[test]
fn t17_devices_are_skipped_in_a_user_namespace() {
    // Re-runs the test below in a new user namespace, where mknod of a device is EPERM.
    let exe = std::env::current_exe().unwrap();
    let out = match Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(&exe)
        .args([
            "--exact",
            "archive::tests::t17_userns_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(USERNS_CHILD, "1")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("unshare failed") {
        eprintln!("skipped: user namespaces unavailable: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
    assert!(stdout.contains("userns child ran"), "{stdout}");
}

#[test]
fn t17_userns_child() {
    if std::env::var_os(USERNS_CHILD).is_none() {
        return;
    }
    let sb = Sandbox::new();
    let tar = Tar::new()
        .spec(Spec {
            dev: (1, 3),
            ..Spec::new(b'3', "dev/null")
        })
        .spec(Spec::new(b'6', "fifo"))
        .file("after", b"still applied")
        .finish();
    sb.apply(&tar).unwrap();
    assert!(!sb.exists("dev/null"));
    assert!(sb.exists("fifo"));
    assert_eq!(sb.read("after"), "still applied");
    println!("userns child ran");
}

/// `security.capability` v2: CAP_NET_BIND_SERVICE permitted and effective.
fn cap_net_bind() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(0x0200_0001u32.to_le_bytes());
    v.extend((1u32 << 10).to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v
}

#[test]
fn t18_setuid_and_capabilities_survive_in_order() {
    let sb = Sandbox::new();
    let cap = cap_net_bind();
    let tar = Tar::new()
        .spec(Spec {
            data: b"#!/bin/true\n",
            mode: 0o4755,
            ..Spec::new(b'0', "bin/su")
        })
        .pax(&[("SCHILY.xattr.security.capability", &cap)])
        .spec(Spec {
            data: b"binary",
            mode: 0o6755,
            uid: 1000,
            gid: 1000,
            ..Spec::new(b'0', "bin/ping")
        })
        .spec(Spec {
            mode: 0o1777,
            ..Spec::new(b'5', "tmp")
        })
        .spec(Spec {
            mode: 0o2775,
            gid: 50,
            ..Spec::new(b'5', "srv")
        })
        .finish();
    sb.apply(&tar).unwrap();
    let su = fs::metadata(sb.r("bin/su")).unwrap();
    assert_eq!((su.mode() & 0o7777, su.uid()), (0o4755, 0));
    let ping = fs::metadata(sb.r("bin/ping")).unwrap();
    assert_eq!(
        (ping.mode() & 0o7777, ping.uid(), ping.gid()),
        (0o6755, 1000, 1000)
    );
    assert_eq!(xattr(&sb.r("bin/ping"), "security.capability"), Some(cap));
    assert_eq!(fs::metadata(sb.r("tmp")).unwrap().mode() & 0o7777, 0o1777);
    let srv = fs::metadata(sb.r("srv")).unwrap();
    assert_eq!((srv.mode() & 0o7777, srv.gid()), (0o2775, 50));
}

#[test]
fn t19_user_xattrs_where_unsupported_warn_and_continue() {
    // The kernel allows user.* only on regular files and directories: EPERM elsewhere.
    let sb = Sandbox::new();
    let tar = Tar::new()
        .pax(&[("SCHILY.xattr.user.note", b"on a symlink")])
        .symlink("link", "target")
        .pax(&[("SCHILY.xattr.user.note", b"on a fifo")])
        .spec(Spec::new(b'6', "fifo"))
        .pax(&[("SCHILY.xattr.user.note", b"on a file")])
        .file("file", b"f")
        .finish();
    sb.apply(&tar).unwrap();
    assert!(sb.exists("link") && sb.exists("fifo"));
    assert_eq!(
        xattr(&sb.r("file"), "user.note").as_deref(),
        Some(&b"on a file"[..])
    );
}

#[test]
fn empty_numeric_fields_and_global_headers_read_as_go_does() {
    // Go and GNU tar read an all-NUL numeric field as 0; the tar crate calls it malformed.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..5].copy_from_slice(b"plain");
    h.set_size(2);
    h.set_mode(0o640);
    h.set_cksum();
    let mut t = Tar::new();
    let mut g = tar::Header::new_ustar();
    let global = pax_record(b"comment", b"git archive");
    g.as_old_mut().name[..6].copy_from_slice(b"global");
    g.set_entry_type(tar::EntryType::XGlobalHeader);
    g.set_size(global.len() as u64);
    g.set_mode(0o644);
    g.set_cksum();
    t.block(&g, &global);
    t.block(&h, b"ok");
    let tar = t.finish();
    if let Some(gnu) = gnu_listing(&tar) {
        assert_eq!(gnu, our_listing(&tar).unwrap());
    }
    let sb = Sandbox::new();
    assert_eq!(sb.apply(&tar).unwrap().entries, 2);
    let m = fs::metadata(sb.r("plain")).unwrap();
    assert_eq!((m.uid(), m.mtime(), m.mode() & 0o7777), (0, 0, 0o640));
    assert!(!sb.exists("global"));
}

// ---------------------------------------------------------------------------------------------
// T20 - T22: names, directory times, diff IDs.

#[test]
fn t20_root_names_are_ignored_and_dotdot_is_clamped() {
    let sb = Sandbox::new();
    let root_mode = fs::metadata(&sb.root).unwrap().mode();
    let tar = Tar::new()
        .dir(".", 0o700)
        .dir("./", 0o777)
        .dir("/", 0o700)
        .file_mode("../../x", b"x", 0o600)
        .file("/../y", b"y")
        .finish();
    let applied = sb.apply(&tar).unwrap();
    assert_eq!(applied.entries, 5);
    assert_eq!(sb.read("x"), "x");
    assert_eq!(sb.read("y"), "y");
    assert_eq!(fs::metadata(&sb.root).unwrap().mode(), root_mode);
    sb.assert_outside_untouched();
}

#[test]
fn t21_directory_times_are_set_after_their_children() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .spec(Spec {
            mtime: 1_000_000_000,
            ..Spec::new(b'5', "a")
        })
        .spec(Spec {
            mtime: 1_100_000_000,
            ..Spec::new(b'5', "a/b")
        })
        .file("a/b/c", b"c")
        .file("a/d", b"d")
        .pax(&[("mtime", b"1200000000.123456789")])
        .dir("e", 0o755)
        .file("e/f", b"f")
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(fs::metadata(sb.r("a")).unwrap().mtime(), 1_000_000_000);
    assert_eq!(fs::metadata(sb.r("a/b")).unwrap().mtime(), 1_100_000_000);
    assert_eq!(fs::metadata(sb.r("a/d")).unwrap().mtime(), MTIME as i64);
    let e = fs::metadata(sb.r("e")).unwrap();
    assert_eq!((e.mtime(), e.mtime_nsec()), (1_200_000_000, 123_456_789));
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

#[test]
fn t22_diff_id_is_the_hash_of_the_whole_uncompressed_stream() {
    let mut tar = Tar::new().file("a", b"a").finish();
    // GNU tar pads to 10240-byte records; the padding is part of the diff ID.
    tar.resize(10240, 0);
    let sb = Sandbox::new();
    let applied = sb.apply(&tar).unwrap();
    assert_eq!(applied.diff_id, sha256(&tar));
    assert_eq!(applied.uncompressed_size, 10240);
    assert_eq!(applied.entries, 1);

    let gz = gzip(&tar);
    let sb = Sandbox::new();
    assert_eq!(sb.apply(&gz).unwrap().diff_id, sha256(&tar));

    // Trailing garbage is hashed too (and ignored), so a tampered stream changes the ID.
    let mut tampered = tar.clone();
    tampered.extend(b"garbage");
    let sb = Sandbox::new();
    let applied = sb.apply(&tampered).unwrap();
    assert_ne!(applied.diff_id, sha256(&tar));
    assert_eq!(applied.diff_id, sha256(&tampered));

    // An empty layer is valid: no entries, the hash of nothing.
    let sb = Sandbox::new();
    assert_eq!(sb.apply(&b""[..]).unwrap().diff_id, sha256(b""));
}

// ---------------------------------------------------------------------------------------------
// T23 - T25: caps, long names, compression.

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn t23_caps_stop_bombs_with_a_clear_error() {
    // A tar holding 1 GiB of zeros, gzipped to ~1 MiB: one member compressing 1 MiB of zeros,
    // repeated (a multi-member stream), between a header member and a trailer member.
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_cksum();
    let zeros = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        enc.finish().unwrap()
    };
    let mut bomb = gzip(h.as_bytes());
    for _ in 0..1024 {
        bomb.extend_from_slice(&zeros);
    }
    bomb.extend(gzip(&[0u8; 1024]));
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let opts = ApplyOptions {
        max_uncompressed_bytes: 1 << 20,
        ..ApplyOptions::default()
    };
    let sb = Sandbox::new();
    let err = sb.apply_with(&bomb, &opts).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { limit } if limit == 1 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("max_uncompressed_bytes"), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    // A GNU sparse entry claiming 1 GiB with 512 bytes of data: the expanded size counts.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(512);
    h.set_mode(0o644);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset((1 << 30) - 512);
        gnu.sparse[0].set_length(512);
        gnu.set_real_size(1 << 30);
    }
    h.set_cksum();
    let mut t = Tar::new();
    t.block(&h, &[1u8; 512]);
    let sb = Sandbox::new();
    let err = sb.apply_with(&t.finish(), &opts).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");

    // A GNU long name of 64 MiB: refused before the parser buffers it whole.
    let mut t = Tar::new();
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    t.block(&h, &vec![b'a'; 64 << 20]);
    t.file("victim", b"");
    let msg = assert_invalid(Sandbox::new().apply(&t.finish()));
    assert!(msg.contains("headers"), "{msg}");

    // Entry count: 1001 empty files against a cap of 1000 (the real default is 2 million).
    let mut t = Tar::new();
    for i in 0..1001 {
        t.file(&format!("f{i}"), b"");
    }
    let many = t.finish();
    let opts = ApplyOptions {
        max_entries: 1000,
        ..ApplyOptions::default()
    };
    let err = Sandbox::new().apply_with(&many, &opts).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit: 1000 }),
        "{err}"
    );
    assert!(err.to_string().contains("max_entries"), "{err}");
    let opts = ApplyOptions {
        max_entries: 1001,
        ..ApplyOptions::default()
    };
    assert_eq!(
        Sandbox::new().apply_with(&many, &opts).unwrap().entries,
        1001
    );
}

#[test]
fn t24_prefix_field_and_long_names_are_read() {
    // containerd TestPrefixHeaderReadable: a gzipped ustar entry using the prefix field.
    let prefix_gz = b"\x1f\x8b\x08\x08\x44\x21\x68\x59\x00\x03\x74\x2e\x74\x61\x72\x00\x4b\xcb\xcf\x67\xa0\x35\x30\x80\x00\x86\x06\x10\x47\x01\xc1\x37\x40\x00\x54\xb6\xb1\xa1\xa9\x99\x09\x48\x25\x1d\x40\x69\x71\x49\x62\x91\x02\xe5\x76\xa1\x79\x84\x21\x91\xd6\x80\x72\xaf\x8f\x82\x51\x30\x0a\x46\x36\x00\x00\xf0\x1c\x1e\x95\x00\x06\x00\x00";
    let sb = Sandbox::new();
    sb.apply(&prefix_gz[..]).unwrap();
    assert!(sb.exists(&format!("{}/foo", "a".repeat(97))));

    // A ustar prefix made here, a GNU long name, a PAX path and a long symlink target.
    let mut h = tar::Header::new_ustar();
    let prefix = "p".repeat(150);
    h.as_ustar_mut().unwrap().prefix[..150].copy_from_slice(prefix.as_bytes());
    h.as_old_mut().name[..4].copy_from_slice(b"name");
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    let mut t = Tar::new();
    t.block(&h, b"pf");
    let gnu_long = format!("{}/{}", "g".repeat(200), "h".repeat(200));
    let pax_long = format!("{}/{}", "x".repeat(150), "y".repeat(250));
    let target = format!("/{}", "t".repeat(300));
    t.file(&gnu_long, b"gnu")
        .pax(&[("path", pax_long.as_bytes())])
        .file("ignored-short-name", b"pax")
        .symlink("longlink", &target);
    let sb = Sandbox::new();
    sb.apply(&t.finish()).unwrap();
    assert_eq!(sb.read(&format!("{prefix}/name")), "pf");
    assert_eq!(sb.read(&gnu_long), "gnu");
    assert_eq!(sb.read(&pax_long), "pax");
    assert!(!sb.exists("ignored-short-name"));
    assert_eq!(fs::read_link(sb.r("longlink")).unwrap(), Path::new(&target));
}

#[test]
fn t25_compression_is_detected_by_magic() {
    let mut big = vec![0u8; 300_000];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let tar = Tar::new()
        .file("one", b"first")
        .file("big", &big)
        .file("two", b"second")
        .finish();
    // Two gzip members back to back: a single-member decoder would stop half-way.
    let (a, b) = tar.split_at(1536);
    let mut multi = gzip(a);
    multi.extend(gzip(b));
    let zstd = zstd::encode_all(&tar[..], 3).unwrap();
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend(&zstd);
    for (name, layer, kind) in [
        ("plain", tar.clone(), Compression::None),
        ("multi-member gzip", multi, Compression::Gzip),
        ("zstd", zstd, Compression::Zstd),
        ("zstd after a skippable frame", skippable, Compression::Zstd),
    ] {
        assert_eq!(detect_compression(&layer), kind, "{name}");
        let sb = Sandbox::new();
        let applied = sb.apply(&layer).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(applied.diff_id, sha256(&tar), "{name}");
        assert_eq!(sb.read("one"), "first", "{name}");
        assert_eq!(fs::read(sb.r("big")).unwrap(), big, "{name}");
        assert_eq!(sb.read("two"), "second", "{name}");
    }
    assert_eq!(detect_compression(&[0x1f, 0x8b]), Compression::None);
    assert_eq!(detect_compression(b""), Compression::None);

    // Corrupt compressed data is an invalid archive; a failing reader is unavailability.
    let mut bad = gzip(&tar);
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    assert_invalid(Sandbox::new().apply(&bad));
    let mut truncated = gzip(&tar);
    truncated.truncate(truncated.len() / 2);
    assert_invalid(Sandbox::new().apply(&truncated));
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("connection reset"))
        }
    }
    let sb = Sandbox::new();
    let err = apply_layer(
        &sb.root,
        std::io::Read::chain(&gzip(&tar)[..100], Failing),
        &ApplyOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Read(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

#[test]
fn round_trip_of_a_tree_made_by_gnu_tar() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("skipped: GNU tar not found");
        return;
    }
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    fs::create_dir_all(src.join("etc/sub")).unwrap();
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    fs::write(src.join("etc/passwd"), "root:x:0:0\n").unwrap();
    let mut big = vec![0u8; 1 << 20];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    fs::write(src.join("usr/bin/big"), &big).unwrap();
    fs::write(src.join("usr/bin/tool"), "tool").unwrap();
    fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool-alias")).unwrap();
    fs::write(src.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("../etc/passwd", src.join("usr/passwd-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", src.join("dangling")).unwrap();
    let d = fsops::open_dir(&src).unwrap();
    fsops::mknod_at(
        d.as_fd(),
        OsStr::new("null"),
        FileKind::CharDevice,
        0o666,
        1,
        3,
    )
    .unwrap();
    fsops::mknod_at(
        d.as_fd(),
        OsStr::new("loop"),
        FileKind::BlockDevice,
        0o660,
        7,
        1,
    )
    .unwrap();
    fsops::mknod_at(d.as_fd(), OsStr::new("fifo"), FileKind::Fifo, 0o640, 0, 0).unwrap();
    for (p, mode) in [
        ("etc/passwd", 0o644),
        ("usr/bin/tool", 0o4755),
        ("usr/bin/big", 0o600),
        ("etc/sub", 0o2750),
        ("null", 0o666),
        ("loop", 0o660),
        ("fifo", 0o640),
    ] {
        fs::set_permissions(src.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::lchown(src.join("etc/sub"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::lchown(src.join("usr/passwd-link"), Some(33), Some(34)).unwrap();
    std::os::unix::fs::lchown(src.join("usr/bin/big"), Some(65534), Some(65534)).unwrap();
    {
        let f = fs::File::open(src.join("usr/bin/big")).unwrap();
        fsops::set_xattr(f.as_fd(), OsStr::new("user.mime"), b"application/x").unwrap();
        fsops::set_xattr(
            f.as_fd(),
            OsStr::new("security.capability"),
            &cap_net_bind(),
        )
        .unwrap();
        let dir = fs::File::open(src.join("etc")).unwrap();
        fsops::set_xattr(dir.as_fd(), OsStr::new("user.dir"), b"d").unwrap();
    }
    let archive = src_dir.path().join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
        ])
        .arg(&src)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let layer = fs::read(&archive).unwrap();

    let sb = Sandbox::new();
    let applied = sb.apply(&gzip(&layer)).unwrap();
    assert_eq!(applied.diff_id, sha256(&layer));
    assert_eq!(tree(&sb.root), tree(&src));
    let tool = fs::metadata(sb.r("usr/bin/tool")).unwrap();
    assert_eq!(tool.nlink(), 2);
    assert_eq!(sb.ino("usr/bin/tool"), sb.ino("usr/bin/tool-alias"));
    assert_eq!(
        xattr(&sb.r("usr/bin/big"), "security.capability"),
        Some(cap_net_bind())
    );
    sb.assert_outside_untouched();
}

/// Everything a layer records about a tree, by path.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("-> {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            inodes.entry(m.ino()).or_default().push(rel.clone());
            format!("file {}", sha256(&fs::read(&p).unwrap()))
        } else {
            format!("special rdev={} type={:?}", m.rdev(), ft)
        };
        let xattrs = if ft.is_file() || ft.is_dir() {
            let f = fs::File::open(&p).unwrap();
            let mut keys = fsops::list_xattrs(f.as_fd()).unwrap();
            keys.sort();
            keys.iter()
                .map(|k| {
                    let v = fsops::get_xattr(f.as_fd(), k).unwrap().unwrap_or_default();
                    format!("{}={}", k.to_string_lossy(), hex::encode(v))
                })
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };
        // The root's own metadata isn't in a layer (`./` is ignored).
        let mode = if rel.is_empty() {
            String::new()
        } else {
            format!(
                "{:o} {}:{} mtime={}.{:09}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            )
        };
        out.insert(rel, format!("{what} {mode} [{xattrs}]"));
    }
    for group in inodes.values().filter(|g| g.len() > 1) {
        let mut g = group.clone();
        g.sort();
        out.insert(format!("hardlinks {}", g[0]), g.join(" "));
    }
    out
}

#[test]
fn round_trip_of_a_sparse_file_made_by_gnu_tar() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("skipped: GNU tar not found");
        return;
    }
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", (4 << 20) - 3).unwrap();
    drop(f);
    let out = Command::new("tar")
        .args(["--format=gnu", "--sparse", "-C"])
        .arg(&src)
        .args(["-cf", "-", "sparse"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.len() < 1 << 20,
        "GNU tar did not store it sparse"
    );
    let sb = Sandbox::new();
    sb.apply(&out.stdout).unwrap();
    assert_eq!(
        fs::read(sb.r("sparse")).unwrap(),
        fs::read(src.join("sparse")).unwrap()
    );
}

#[test]
fn applying_onto_an_existing_tree_replaces_and_merges() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.r("etc/conf.d")).unwrap();
    fs::write(sb.r("etc/conf.d/old"), "old").unwrap();
    fs::create_dir_all(sb.r("was-dir/child")).unwrap();
    fs::write(sb.r("was-file"), "f").unwrap();
    let tar = Tar::new()
        .dir("etc", 0o711)
        .file("etc/conf.d/new", b"new")
        .file("was-dir", b"now a file")
        .dir("was-file", 0o700)
        .file("was-file/inside", b"i")
        .finish();
    sb.apply(&tar).unwrap();
    assert_eq!(sb.read("etc/conf.d/old"), "old");
    assert_eq!(sb.read("etc/conf.d/new"), "new");
    assert_eq!(fs::metadata(sb.r("etc")).unwrap().mode() & 0o7777, 0o711);
    assert_eq!(sb.read("was-dir"), "now a file");
    assert_eq!(sb.read("was-file/inside"), "i");
    // A file where a parent should be is the archive's fault.
    let tar = Tar::new().file("was-dir/x", b"x").finish();
    let msg = assert_invalid(sb.apply(&tar));
    assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
    sb.assert_outside_untouched();
}

#[test]
fn applying_never_changes_the_cwd() {
    let before = std::env::current_dir().unwrap();
    let sb = Sandbox::new();
    sb.apply(
        &passwd_layer()
            .symlink("l", "/etc")
            .file("l/x", b"x")
            .finish(),
    )
    .unwrap();
    assert_eq!(std::env::current_dir().unwrap(), before);
}
