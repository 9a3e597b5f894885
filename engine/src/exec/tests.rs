//! Unit tests of the executor logic that needs neither root nor runc. The behaviour with the
//! real runc is covered by `tests/tests/exec.rs`.

use super::cgroup::Hierarchies;
use super::output::{capture, Tail};
use super::rootfs::{self, Leaf, Lookup};
use super::runc::{self, Verdict};
use super::spec::{self, SpecInput};
use super::user::resolve;
use super::*;
use crate::sys::inroot::Root;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

fn version(text: &str) -> runc::RuncVersion {
    runc::parse_version(text).unwrap_or_else(|| panic!("{text:?} does not parse"))
}

#[test]
fn runc_versions_are_judged_by_their_cves() {
    let debian = version(
        "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\n",
    );
    assert_eq!(
        (debian.major, debian.minor, debian.patch, debian.debian),
        (1, 1, 5, Some((12, 1)))
    );
    let Verdict::Warn(w) = runc::judge(&debian) else {
        panic!("Debian's backport is accepted with a warning")
    };
    assert!(w.contains("1.1.5+ds1") && w.contains("CVE-2024-21626") && w.contains("deb12u1"));
    assert!(w.contains("CVE-2025-31133") && w.contains("CVE-2025-52565"));

    let refuse = |text: &str| match runc::judge(&version(text)) {
        Verdict::Refuse(r) => r,
        other => panic!("{text}: {other:?}"),
    };
    let r = refuse("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n");
    assert!(
        r.contains("1.1.5+ds1") && r.contains("CVE-2024-21626"),
        "{r}"
    );
    refuse("runc version 1.1.11\n");
    refuse("runc version 1.1.12-rc.1\n");
    refuse("runc version 1.0.0~rc93+ds1\ncommit: 1.0.0~rc93+ds1-5+deb11u3\n");
    refuse("runc version 1.1.4+ds1\ncommit: 1.1.4+ds1-1+deb12u9\n");

    for warn in ["1.1.12", "1.2.7", "1.3.0", "1.3.2", "1.4.0-rc.2"] {
        let v = version(&format!("runc version {warn}\n"));
        assert!(
            matches!(runc::judge(&v), Verdict::Warn(w) if w.contains(warn) && w.contains("CVE-2025-52881")),
            "{warn}"
        );
    }
    for ok in ["1.2.8", "1.2.10", "1.3.3", "1.4.0-rc.3", "1.4.0", "2.0.0"] {
        let v = version(&format!("runc version {ok}\ncommit: v{ok}-0-g1234\n"));
        assert_eq!(runc::judge(&v), Verdict::Accept, "{ok}");
    }
    assert!(runc::parse_version("crun version 1.8.1").is_none());
    assert!(runc::parse_version("runc version x.y").is_none());
}

#[test]
fn runc_log_errors_and_their_classification() {
    let log = "{\"level\":\"warning\",\"msg\":\"unknown capability\",\"time\":\"t\"}\n\
               not json\n\
               {\"level\":\"error\",\"msg\":\"runc run failed: unable to start container process: \
               exec: \\\"nope\\\": executable file not found in $PATH\",\"time\":\"t\"}\n";
    let errors = runc::log_errors(log);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("runc run failed: "));
    assert!(runc::is_user_error(&errors[0]));
    assert!(!runc::is_user_error(
        "unable to apply cgroup configuration: operation not permitted"
    ));
}

#[test]
fn users_resolve_like_runc() {
    let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\nbroken:x:notanumber:0::/:\n\
                  app:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
    let group = "root:x:0:\nwheel:x:10:root,app\nstaff:x:50: app \napp:x:1000:\nnogroup:x:65534:\n";
    let ok = |spec: &str| {
        let u = resolve(spec, Some(passwd), Some(group)).unwrap();
        (u.uid, u.gid, u.additional_gids)
    };
    assert_eq!(ok(""), (0, 0, vec![0]));
    assert_eq!(ok("root"), (0, 0, vec![0, 10]));
    assert_eq!(ok("app"), (1000, 1000, vec![1000, 10, 50]));
    assert_eq!(ok("1000"), (1000, 1000, vec![1000, 10, 50]));
    assert_eq!(ok("app:staff"), (1000, 50, vec![50]));
    assert_eq!(ok("app:10"), (1000, 10, vec![10]));
    assert_eq!(ok("app:"), (1000, 1000, vec![1000, 10, 50]));
    assert_eq!(ok("4242"), (4242, 0, vec![0]));
    assert_eq!(ok("4242:4343"), (4242, 4343, vec![4343]));
    assert_eq!(ok("nobody:app"), (65534, 1000, vec![1000]));
    assert_eq!(ok(":staff"), (0, 50, vec![50]));

    // The numeric form needs no user database.
    assert_eq!(resolve("7:8", None, None).unwrap().additional_gids, [8]);
    assert_eq!(resolve("7", None, None).unwrap().gid, 0);
    let err = |spec: &str, p: Option<&str>, g: Option<&str>| resolve(spec, p, g).unwrap_err();
    assert!(err("ghost", Some(passwd), Some(group)).contains("unable to find user ghost"));
    assert!(err("app", None, None).contains("no /etc/passwd"));
    assert!(err("app:ghosts", Some(passwd), Some(group)).contains("unable to find group ghosts"));
    assert!(err("app:staff", Some(passwd), None).contains("no /etc/group"));
    assert!(err("broken", Some(passwd), Some(group)).contains("unable to find user"));
    assert!(err("4294967295", None, None).contains("out of range"));
    assert!(err("1:99999999999", None, None).contains("out of range"));
}

fn request(args: &[&str]) -> ExecRequest {
    ExecRequest {
        rootfs: "/var/lib/dagger/x".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    }
}

#[test]
fn requests_are_validated_and_normalized() {
    let r = normalize(request(&["sh"])).unwrap();
    assert_eq!(r.env, [DEFAULT_PATH]);
    assert_eq!((r.cwd.as_str(), r.hostname.as_str()), ("/", "dagger"));

    let mut req = request(&["sh"]);
    req.env = vec!["PATH=/bin".into(), "A=b=c".into(), "EMPTY=".into()];
    req.cwd = "work/../src/./app/".into();
    req.hostname = String::new();
    req.output_limit = 0;
    let r = normalize(req).unwrap();
    assert_eq!(r.env, ["PATH=/bin", "A=b=c", "EMPTY="]);
    assert_eq!(r.cwd, "/src/app");
    assert_eq!(r.hostname, DEFAULT_HOSTNAME);
    assert_eq!(r.output_limit, DEFAULT_OUTPUT_LIMIT);

    let rejected = |edit: &dyn Fn(&mut ExecRequest)| {
        let mut req = request(&["sh"]);
        edit(&mut req);
        match normalize(req) {
            Err(e @ ExecError::InvalidRequest(_)) => {
                assert_eq!(e.kind(), ErrorKind::InvalidArgument);
                e.to_string()
            }
            other => panic!("accepted: {other:?}"),
        }
    };
    for cwd in [
        "/proc/self/fd/7",
        "/proc/self/fd",
        "/proc",
        "/../proc/1/cwd",
        "proc/thread-self/fd/3",
    ] {
        assert!(
            rejected(&|r| r.cwd = cwd.into()).contains("inside /proc"),
            "{cwd}"
        );
    }
    rejected(&|r| r.args.clear());
    rejected(&|r| r.args = vec![String::new()]);
    rejected(&|r| r.args.push("a\0b".into()));
    rejected(&|r| r.env = vec!["NOVALUE".into()]);
    rejected(&|r| r.env = vec!["=x".into()]);
    rejected(&|r| r.rootfs = "relative".into());
    rejected(&|r| r.hostname = "h".repeat(65));
    rejected(&|r| r.memory_limit = Some(1024));
    rejected(&|r| r.extra_mounts = vec![bind_mount(Path::new("/tmp"), "/proc/sys", false)]);
    rejected(&|r| r.extra_mounts = vec![bind_mount(Path::new("/tmp"), "/", false)]);
    rejected(&|r| r.extra_mounts = vec![bind_mount(Path::new("/tmp"), "rel", false)]);
    rejected(&|r| r.resolv_conf = Some("/nonexistent/resolv.conf".into()));
}

fn input() -> SpecInput {
    SpecInput {
        rootfs: "/state/rootfs".into(),
        args: vec!["/.init".into(), "--".into(), "sh".into()],
        env: vec![DEFAULT_PATH.into()],
        cwd: "/src".into(),
        uid: 1000,
        gid: 1000,
        additional_gids: vec![1000, 10],
        hostname: "dagger".into(),
        insecure_caps: None,
        netns: None,
        resolv_conf: Some("/run/r.conf".into()),
        hosts: None,
        init: Some("/usr/bin/tini-static".into()),
        extra_mounts: vec![bind_mount(Path::new("/cache"), "/c", false)],
        cgroups_path: "dagger-exec/1-0-0/ctr".into(),
        cgroup_v2: false,
        memory_limit: Some(64 << 20),
        devices: Vec::new(),
    }
}

fn json(input: &SpecInput) -> serde_json::Value {
    serde_json::to_value(spec::build(input).unwrap()).unwrap()
}

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn default_spec_is_the_sandbox() {
    let s = json(&input());
    let p = &s["process"];
    assert_eq!(p["terminal"], false);
    assert_eq!(p["noNewPrivileges"], false);
    assert!(p.get("rlimits").is_none(), "rlimits are inherited");
    assert_eq!(p["user"]["additionalGids"], serde_json::json!([1000, 10]));
    assert_eq!(p["cwd"], "/src");
    let mut default: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    default.sort();
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(names(&p["capabilities"][set]), default, "{set}");
    }
    for set in ["inheritable", "ambient"] {
        assert!(names(&p["capabilities"][set]).is_empty(), "{set}");
    }

    let l = &s["linux"];
    assert_eq!(l["maskedPaths"].as_array().unwrap().len(), 10);
    assert!(l["maskedPaths"]
        .as_array()
        .unwrap()
        .contains(&"/proc/kcore".into()));
    assert_eq!(l["readonlyPaths"].as_array().unwrap().len(), 5);
    let ns: Vec<&str> = l["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
    assert!(l["namespaces"][4].get("path").is_none());
    assert_eq!(l["cgroupsPath"], "dagger-exec/1-0-0/ctr");
    assert_eq!(
        l["resources"]["devices"],
        serde_json::json!([{"allow": false, "type": "a", "access": "rwm"}])
    );
    assert!(
        l["resources"].get("memory").is_none(),
        "on v1 the limit is on our parent cgroup"
    );

    let mounts = s["mounts"].as_array().unwrap();
    let at = |dest: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == dest)
            .unwrap_or_else(|| panic!("no mount at {dest}"))
    };
    let has = |dest: &str, opt: &str| {
        at(dest)["options"]
            .as_array()
            .unwrap()
            .contains(&opt.into())
    };
    assert!(has("/sys", "ro") && has("/sys/fs/cgroup", "ro"));
    assert!(has("/.init", "ro") && at("/.init")["source"] == "/usr/bin/tini-static");
    assert!(has("/etc/resolv.conf", "ro"));
    assert!(mounts.iter().all(|m| m["destination"] != "/etc/hosts"));
    assert!(mounts.iter().all(|m| m["destination"] != "/run"));
    assert_eq!(at("/c")["source"], "/cache");
    assert_eq!(at("/dev/shm")["options"][3], "mode=1777");
    assert_eq!(s["hostname"], "dagger");
    assert_eq!(
        s["root"],
        serde_json::json!({"path": "/state/rootfs", "readonly": false})
    );
}

#[test]
fn insecure_spec_opens_up() {
    let mut i = input();
    let mask = crate::sys::caps::mask_of(&["CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_NET_ADMIN"]).unwrap();
    i.insecure_caps = Some(mask);
    i.netns = Some("/var/run/netns/x".into());
    i.cgroup_v2 = true;
    i.devices = vec![oci_spec::runtime::LinuxDeviceBuilder::default()
        .path("/dev/fuse")
        .typ(oci_spec::runtime::LinuxDeviceType::C)
        .major(10)
        .minor(229)
        .build()
        .unwrap()];
    let s = json(&i);
    let caps = &s["process"]["capabilities"];
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        assert_eq!(
            names(&caps[set]),
            ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"],
            "{set}"
        );
    }
    let l = &s["linux"];
    assert_eq!(l["maskedPaths"], serde_json::json!([]));
    assert_eq!(l["readonlyPaths"], serde_json::json!([]));
    assert_eq!(l["resources"]["devices"][0]["allow"], true);
    assert_eq!(l["devices"][0]["path"], "/dev/fuse");
    assert_eq!(l["namespaces"][4]["path"], "/var/run/netns/x");
    assert_eq!(
        l["namespaces"][5]["type"], "cgroup",
        "cgroup namespace on v2"
    );
    assert_eq!(l["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(l["resources"]["memory"]["swap"], 64 << 20);
    let sys = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    assert!(!sys["options"].as_array().unwrap().contains(&"ro".into()));
}

#[test]
fn every_known_capability_has_an_oci_name() {
    let all = (1u64 << crate::sys::caps::NAMES.len()) - 1;
    assert_eq!(spec::oci_caps(all).len(), crate::sys::caps::NAMES.len());
    assert_eq!(
        spec::oci_caps(crate::sys::caps::mask_of(&DEFAULT_CAPS).unwrap()).len(),
        14
    );
}

#[test]
fn tail_keeps_the_last_bytes() {
    let mut t = Tail::new(5);
    t.push(b"abc");
    assert!(!t.truncated());
    t.push(b"de");
    assert!(!t.truncated());
    t.push(b"f");
    assert!(t.truncated());
    t.push(b"0123456789");
    assert_eq!(t.into_vec(), b"56789");
    let mut z = Tail::new(0);
    z.push(b"x");
    assert!(z.truncated());
    assert!(z.into_vec().is_empty());
}

#[tokio::test]
async fn capture_spills_only_what_outgrows_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let c = capture(
        Some(&big[..]),
        Some(&b"short"[..]),
        1000,
        &dir.path().join("x"),
    )
    .await;
    assert!(c.stdout.truncated() && !c.stderr.truncated() && c.combined.truncated());
    let file = c.stdout_file.expect("stdout spilled");
    assert_eq!(std::fs::read(file.path()).unwrap(), big);
    assert_eq!(file.len(), 10_000);
    assert!(c.stderr_file.is_none());
    assert_eq!(c.stdout.into_vec(), &big[9_000..]);
    assert_eq!(c.stderr.into_vec(), b"short");
    let kept = file.keep();
    assert!(kept.exists(), "kept files are the caller's");

    let c = capture(None::<&[u8]>, Some(&b"e"[..]), 10, &dir.path().join("y")).await;
    assert_eq!(c.combined.into_vec(), b"e");
}

#[test]
fn init_must_be_a_static_elf() {
    // A 64-bit little-endian header with two program headers at offset 64.
    let mut elf = vec![0u8; 64 + 2 * 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&2u16.to_le_bytes());
    elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    assert_eq!(init::elf_has_interpreter(&elf), Some(false));
    elf[120..124].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
    assert_eq!(init::elf_has_interpreter(&elf), Some(true));
    assert_eq!(init::elf_has_interpreter(b"#!/bin/sh\n"), None);
    elf[56..58].copy_from_slice(&u16::MAX.to_le_bytes()); // headers past the buffer
    assert_eq!(init::elf_has_interpreter(&elf), Some(true));
    elf[32..40].copy_from_slice(&(u64::MAX - 2).to_le_bytes()); // hostile offsets
    assert_eq!(init::elf_has_interpreter(&elf), Some(false));

    // The test binary itself is dynamically linked.
    let me = std::env::current_exe().unwrap();
    assert!(init::check(&me).unwrap_err().contains("static"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("init");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    assert!(init::check(&script).unwrap_err().contains("executable"));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(init::check(&script).unwrap_err().contains("not an ELF"));
    assert!(init::check(&dir.path().join("missing"))
        .unwrap_err()
        .contains("tini"));
}

const HYBRID_MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_CGROUP: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

#[test]
fn cgroup_hierarchies_come_from_mountinfo() {
    let h = Hierarchies::from_texts(false, HYBRID_MOUNTINFO, HYBRID_CGROUP);
    assert_eq!(
        h.memory_v1.as_deref(),
        Some(Path::new("/sys/fs/cgroup/memory/process_api/abc"))
    );
    assert!(h.v2.is_none(), "hybrid: runc uses v1");
    assert_eq!(h.own.len(), 4);
    assert!(h.own.contains(&PathBuf::from("/sys/fs/cgroup/unified/")));

    // A container with its own cgroup namespace root, v2 only.
    let h = Hierarchies::from_texts(
        true,
        "40 30 0:31 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "0::/docker/abc/engine\n",
    );
    assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/engine")));
    assert!(h.memory_v1.is_none());
    let h = Hierarchies::from_texts(
        true,
        "40 30 0:31 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "0::/docker/x\n",
    );
    assert!(
        h.own.is_empty(),
        "the engine's cgroup is not visible in that mount"
    );
    assert_eq!(
        super::cgroup::ExecCgroup::runc_path("p-1-2"),
        "dagger-exec/p-1-2/ctr"
    );
}

#[test]
fn paths_clean_lexically() {
    assert_eq!(rootfs::clean("a/../../b/./c//"), "/b/c");
    assert_eq!(rootfs::clean(""), "/");
    assert!(rootfs::is_under("/proc/self/fd", "/proc"));
    assert!(rootfs::is_under("/proc", "/proc"));
    assert!(!rootfs::is_under("/procfoo", "/proc"));
    assert!(rootfs::is_under("/anything", "/"));
}

#[test]
fn stubs_are_created_in_root_and_removed_only_if_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // Symlinks that point out of the tree on the host resolve inside it.
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
    let fd = crate::sys::fsops::open_dir(&root).unwrap();
    let mut stubs = Vec::new();
    for (path, leaf) in [
        ("/etc/resolv.conf", Leaf::File),
        ("/up/cache", Leaf::Dir),
        ("/abs/hosts", Leaf::File),
        ("/mnt/a", Leaf::Dir),
        ("/mnt/b", Leaf::File),
        ("/etc", Leaf::Dir),
    ] {
        rootfs::ensure_path(fd.as_fd(), path, leaf, None, &mut stubs).unwrap();
    }
    // A dangling link (its target is only on the host) is left to runc.
    assert!(rootfs::ensure_path(fd.as_fd(), "/escape/x", Leaf::Dir, None, &mut stubs).is_err());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(root.join("etc/resolv.conf").is_file() && root.join("etc/hosts").is_file());
    assert!(root.join("cache").is_dir());
    assert_eq!(stubs.len(), 6, "{stubs:?}");
    rootfs::refresh_stubs(fd.as_fd(), &mut stubs);

    // The process wrote into one stub and replaced another: both stay. (The replacement may
    // reuse the inode number; its mtime tells it apart, once the coarse clock has ticked.)
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(root.join("mnt/b"), "data").unwrap();
    std::fs::remove_dir(root.join("mnt/a")).unwrap();
    std::fs::create_dir(root.join("mnt/a")).unwrap();
    rootfs::remove_stubs(&root, &stubs).unwrap();
    for gone in ["etc/resolv.conf", "etc/hosts", "cache"] {
        assert!(!root.join(gone).exists(), "{gone}");
    }
    assert!(root.join("etc").is_dir(), "/etc existed before");
    assert_eq!(std::fs::read_to_string(root.join("mnt/b")).unwrap(), "data");
    assert!(root.join("mnt/a").is_dir());

    // The cwd form: owned directories, nothing recorded by the caller.
    rootfs::ensure_path(
        fd.as_fd(),
        "/w/x",
        Leaf::Dir,
        Some((123, 456)),
        &mut Vec::new(),
    )
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(root.join("w/x")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (123, 456, 0o755));
    assert!(
        rootfs::ensure_path(fd.as_fd(), "/mnt/b/sub", Leaf::Dir, None, &mut Vec::new()).is_err()
    );
}

#[test]
fn executables_are_looked_up_in_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("app")).unwrap();
    for (name, mode) in [("bin/tool", 0o755), ("bin/data", 0o644), ("app/run", 0o700)] {
        std::fs::write(root.join(name), "x").unwrap();
        std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::symlink("/bin/tool", root.join("bin/link")).unwrap();
    let r = Root::open(root).unwrap();
    let look = |arg0: &str, path: Option<&str>, mounts: &[&str]| {
        let mounts: Vec<String> = mounts.iter().map(|s| s.to_string()).collect();
        rootfs::find_executable(&r, arg0, path, "/app", &mounts)
    };
    let path = Some("/usr/bin:/bin");
    assert_eq!(look("tool", path, &[]), Lookup::Found);
    assert_eq!(look("link", path, &[]), Lookup::Found);
    assert_eq!(look("/bin/tool", None, &[]), Lookup::Found);
    assert_eq!(look("./run", None, &[]), Lookup::Found);
    assert_eq!(
        look("nope", path, &[]),
        Lookup::NotFound("exec: \"nope\": executable file not found in $PATH".into())
    );
    assert!(matches!(look("data", path, &[]), Lookup::NotFound(_)));
    assert!(
        matches!(look("/bin/data", path, &[]), Lookup::NotFound(m) if m.contains("permission denied"))
    );
    assert!(
        matches!(look("/bin/nope", path, &[]), Lookup::NotFound(m) if m.contains("no such file"))
    );
    // What a mount or a relative PATH entry may provide is runc's to judge.
    assert_eq!(
        look("nope", Some("/tools:/bin"), &["/tools"]),
        Lookup::Unknown
    );
    assert_eq!(look("/tools/x", None, &["/tools"]), Lookup::Unknown);
    assert_eq!(look("nope", Some("bin:/bin"), &[]), Lookup::Unknown);
}
