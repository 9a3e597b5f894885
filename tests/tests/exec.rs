//! The executor against the real runc, as root: each test builds a busybox rootfs and runs
//! processes in it through `dagger_engine::exec::Executor`.

use dagger_engine::error::Classify;
use dagger_engine::exec::{
    bind_mount, ExecError, ExecOutput, ExecRequest, Executor, ExecutorOptions, DEFAULT_CAPS,
    DEFAULT_PATH,
};
use dagger_engine::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "sleep", "head", "tail", "tr", "grep", "wc", "pwd", "true",
    "false", "hostname", "touch", "mkdir", "kill", "env", "readlink", "dd", "sort", "yes",
];

struct Fixture {
    dir: tempfile::TempDir,
    exec: Executor,
    rootfs: PathBuf,
}

impl Fixture {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn req(&self, args: &[&str]) -> ExecRequest {
        ExecRequest {
            rootfs: self.rootfs.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..ExecRequest::default()
        }
    }

    async fn sh(&self, script: &str) -> ExecOutput {
        self.exec
            .run(self.req(&["sh", "-c", script]))
            .await
            .unwrap()
    }
}

fn options(state: PathBuf) -> ExecutorOptions {
    ExecutorOptions {
        runc: "runc".into(),
        state_dir: state,
        max_parallelism: 4,
        allow_insecure: false,
        init: None,
        allow_old_runc: false,
        extra_ca_certs: Vec::new(),
    }
}

/// A busybox rootfs with root, app (1000, also in staff and wheel) and nobody.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // A copy, not a hard link: the container is root and could write through a link.
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         app:x:1000:1000:app:/home/app:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    root
}

async fn fixture_with(tweak: impl FnOnce(&mut ExecutorOptions)) -> Fixture {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the executor tests run real containers and must run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let mut opts = options(dir.path().join("state"));
    tweak(&mut opts);
    let exec = Executor::new(opts).await.unwrap();
    Fixture { dir, exec, rootfs }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `CapEff`-style hex mask of a list of names, from the engine's own table.
fn mask(names: &[&str]) -> u64 {
    dagger_engine::sys::caps::mask_of(names).unwrap()
}

fn cap_line(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[tokio::test]
async fn stdout_stderr_and_exit_codes() {
    let f = fixture().await;
    let out = f.sh("echo out; echo err >&2; exit 3").await;
    assert_eq!(out.exit_code, 3);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let combined = text(&out.combined);
    assert!(
        combined.contains("out\n") && combined.contains("err\n"),
        "{combined}"
    );
    assert!(!out.stdout_truncated && !out.stderr_truncated && !out.oom_killed);
    assert!(out.stdout_file.is_none());
    assert!(out.duration > Duration::ZERO);

    let ok = f.exec.run(f.req(&["true"])).await.unwrap();
    assert_eq!(ok.exit_code, 0);
    assert!(ok.stdout.is_empty() && ok.stderr.is_empty());

    // A signal: 128 + signo (the init reports its child's).
    assert_eq!(f.sh("kill -9 $$").await.exit_code, 137);
    let mut req = f.req(&["sh", "-c", "exit 42"]);
    req.no_init = true;
    assert_eq!(f.exec.run(req).await.unwrap().exit_code, 42);
}

#[tokio::test]
async fn stdin_is_piped_and_closed() {
    let f = fixture().await;
    let mut req = f.req(&["cat"]);
    req.stdin = Some(b"hello\nworld\n".to_vec());
    let out = f.exec.run(req).await.unwrap();
    assert_eq!(
        (out.exit_code, text(&out.stdout)),
        (0, "hello\nworld\n".into())
    );

    // Larger than a pipe buffer, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = f.req(&["cat"]);
    req.stdin = Some(big.clone());
    let out = f.exec.run(req).await.unwrap();
    assert_eq!(out.stdout, big);

    // No stdin: /dev/null, so cat ends at once.
    let out = f.exec.run(f.req(&["cat"])).await.unwrap();
    assert_eq!((out.exit_code, out.stdout.len()), (0, 0));

    // A process that never reads its stdin still finishes.
    let mut req = f.req(&["true"]);
    req.stdin = Some(vec![b'x'; 1 << 20]);
    assert_eq!(f.exec.run(req).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn env_default_path_and_hostname() {
    let f = fixture().await;
    let mut req = f.req(&["sh", "-c", "echo $FOO; echo $PATH; hostname"]);
    req.env = vec!["FOO=bar baz".into()];
    let out = f.exec.run(req).await.unwrap();
    let want = format!(
        "bar baz\n{}\ndagger\n",
        DEFAULT_PATH.strip_prefix("PATH=").unwrap()
    );
    assert_eq!(text(&out.stdout), want);

    let mut req = f.req(&["sh", "-c", "echo $PATH; hostname"]);
    req.env = vec!["PATH=/bin".into()];
    req.hostname = "builder".into();
    assert_eq!(
        text(&f.exec.run(req).await.unwrap().stdout),
        "/bin\nbuilder\n"
    );
}

/// `(soft, hard)` of "Max open files" in a /proc/<pid>/limits text.
fn nofile(limits: &str) -> (u64, u64) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

#[tokio::test]
async fn rlimits_are_inherited_from_the_engine() {
    let f = fixture().await;
    let out = f
        .exec
        .run(f.req(&["cat", "/proc/self/limits"]))
        .await
        .unwrap();
    let (soft, hard) = nofile(&text(&out.stdout));
    let (engine_soft, engine_hard) = nofile(&std::fs::read_to_string("/proc/self/limits").unwrap());
    assert_eq!(
        hard, engine_hard,
        "no rlimit in the spec: the host's hard limit"
    );
    // runc (Go) raises its own soft limit to the hard one before starting the container.
    assert!(soft == engine_soft || soft == engine_hard, "{soft}");
}

#[tokio::test]
async fn cwd_is_created_in_the_rootfs_for_the_user() {
    let f = fixture().await;
    // An absolute symlink in the image: must resolve inside the rootfs, never on the host.
    std::os::unix::fs::symlink("/tmp", f.rootfs.join("link")).unwrap();
    let name = format!("exec-cwd-{}", std::process::id());
    let on_host = Path::new("/tmp").join(&name);
    assert!(!on_host.exists());
    let mut req = f.req(&["sh", "-c", "pwd; touch mine"]);
    req.cwd = format!("/link/{name}/deep");
    req.user = "app".into();
    let out = f.exec.run(req).await.unwrap();
    assert_eq!(
        (out.exit_code, text(&out.stdout), text(&out.stderr)),
        (0, format!("/tmp/{name}/deep\n"), String::new()),
        "the symlink resolves inside the rootfs"
    );
    let created = f.rootfs.join("tmp").join(&name).join("deep");
    let meta = std::fs::metadata(&created).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (1000, 1000, 0o755)
    );
    assert!(created.join("mine").exists());
    assert!(!on_host.exists(), "the symlink was followed on the host");

    for bad in ["/proc/self/fd/7", "/proc/1/cwd", "/../proc/self/fd"] {
        let mut req = f.req(&["true"]);
        req.cwd = bad.into();
        let err = f.exec.run(req).await.unwrap_err();
        assert!(matches!(err, ExecError::InvalidRequest(_)), "{bad}: {err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
}

#[tokio::test]
async fn users_resolve_from_the_rootfs() {
    let f = fixture().await;
    // The kernel keeps supplementary groups sorted.
    let cases = [
        ("", "uid=0(root) gid=0(root) groups=0(root)"),
        ("root", "uid=0(root) gid=0(root) groups=0(root),10(wheel)"),
        (
            "1000",
            "uid=1000(app) gid=1000(app) groups=10(wheel),50(staff),1000(app)",
        ),
        (
            "app",
            "uid=1000(app) gid=1000(app) groups=10(wheel),50(staff),1000(app)",
        ),
        ("1000:50", "uid=1000(app) gid=50(staff) groups=50(staff)"),
        ("app:wheel", "uid=1000(app) gid=10(wheel) groups=10(wheel)"),
        (
            "app:65534",
            "uid=1000(app) gid=65534(nogroup) groups=65534(nogroup)",
        ),
        (
            "nobody",
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
        ),
        ("4242", "uid=4242 gid=0(root) groups=0(root)"),
        ("4242:4343", "uid=4242 gid=4343 groups=4343"),
    ];
    for (user, want) in cases {
        let mut req = f.req(&["id"]);
        req.user = user.into();
        let out = f.exec.run(req).await.unwrap();
        assert_eq!(
            (out.exit_code, text(&out.stdout).trim()),
            (0, want),
            "user {user:?}: {}",
            text(&out.stderr)
        );
    }
    for bad in ["ghost", "app:ghosts", "ghost:0"] {
        let mut req = f.req(&["id"]);
        req.user = bad.into();
        let err = f.exec.run(req).await.unwrap_err();
        assert!(matches!(err, ExecError::User { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("unable to find"), "{err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
}

#[tokio::test]
async fn a_process_that_cannot_start_is_a_clear_error() {
    let f = fixture().await;
    for no_init in [false, true] {
        let mut req = f.req(&["no-such-tool", "--help"]);
        req.no_init = no_init;
        let err = f.exec.run(req).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"no-such-tool\": executable file not found in $PATH"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);

        let mut req = f.req(&["/bin/missing"]);
        req.no_init = no_init;
        let err = f.exec.run(req).await.unwrap_err();
        assert!(
            err.to_string().contains("no such file or directory"),
            "{err}"
        );
    }
    // Exists and is executable, but is no program: only runc can tell.
    std::fs::write(f.rootfs.join("bin/garbage"), b"\x00\x01not an elf").unwrap();
    std::fs::set_permissions(
        f.rootfs.join("bin/garbage"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // runc 1.1 reports a failed exec after start as the process's own failure (as Docker
    // shows it).
    let mut req = f.req(&["garbage"]);
    req.no_init = true;
    let out = f.exec.run(req).await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.exit_code, 1);
    assert!(
        stderr.contains("exec /bin/garbage: exec format error"),
        "{stderr}"
    );
    // Under the init, execvp hands a file without an ELF header to /bin/sh, like a shell does.
    let out = f.exec.run(f.req(&["garbage"])).await.unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(
        text(&out.stderr).contains("/bin/garbage"),
        "{}",
        text(&out.stderr)
    );

    let err = f.exec.run(f.req(&[])).await.unwrap_err();
    assert!(matches!(err, ExecError::InvalidRequest(_)));
}

#[tokio::test]
async fn only_stdio_fds_reach_the_process() {
    let f = fixture().await;
    for no_init in [false, true] {
        let mut req = f.req(&["ls", "-l", "/proc/self/fd"]);
        req.no_init = no_init;
        req.stdin = Some(Vec::new());
        let out = f.exec.run(req).await.unwrap();
        let listing = text(&out.stdout);
        let fds: Vec<(u32, String)> = listing
            .lines()
            .filter(|l| l.starts_with('l'))
            .filter_map(|l| {
                let (left, target) = l.split_once(" -> ").unwrap_or((l, ""));
                let fd = left.split_whitespace().last()?.parse().ok()?;
                Some((fd, target.to_string()))
            })
            .collect();
        let numbers: Vec<u32> = fds.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0, 1, 2, 3], "{listing}");
        for (fd, target) in &fds[..3] {
            assert!(target.starts_with("pipe:["), "fd {fd} -> {target}");
        }
        // The one ls opened itself (the directory it lists, closed before it could be read).
        assert!(
            fds[3].1.is_empty() || fds[3].1.starts_with("/proc/"),
            "{listing}"
        );
    }
}

#[tokio::test]
async fn default_capabilities_are_containerds_fourteen() {
    let f = fixture().await;
    let out = f
        .exec
        .run(f.req(&["cat", "/proc/self/status"]))
        .await
        .unwrap();
    let status = text(&out.stdout);
    let default = mask(&DEFAULT_CAPS);
    assert_eq!(default, 0xa80425fb, "containerd's default set");
    assert_eq!(cap_line(&status, "CapEff"), default);
    assert_eq!(cap_line(&status, "CapPrm"), default);
    assert_eq!(cap_line(&status, "CapBnd"), default);
    assert_eq!(cap_line(&status, "CapInh"), 0);
    assert_eq!(cap_line(&status, "CapAmb"), 0);

    // The same for a non-root user's bounding set.
    let mut req = f.req(&["cat", "/proc/self/status"]);
    req.user = "app".into();
    let status = text(&f.exec.run(req).await.unwrap().stdout);
    assert_eq!(cap_line(&status, "CapBnd"), default);
}

#[tokio::test]
async fn default_sandbox_masks_and_protects() {
    let f = fixture().await;
    let out = f
        .sh("cat /proc/timer_list | wc -c; grep ' /sys ' /proc/mounts; \
             touch /sys/kernel/x 2>&1; (echo 1 > /proc/sys/kernel/domainname) 2>&1; \
             cat /proc/net/dev | tail -n +3 | cut -d: -f1; echo ===; cut -d' ' -f2 /proc/mounts")
        .await;
    let stdout = text(&out.stdout);
    let (head, mounts) = stdout.split_once("===\n").unwrap();
    let lines: Vec<String> = head.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(lines[0], "0", "/proc/timer_list is masked: {lines:?}");
    for path in dagger_engine::exec::MASKED_PATHS
        .iter()
        .chain(&dagger_engine::exec::READONLY_PATHS)
    {
        // runc skips paths the kernel does not have (/proc/kcore on some VMs).
        let on_host = Path::new(path).exists();
        assert_eq!(mounts.lines().any(|m| m == *path), on_host, "{path}");
    }
    assert!(lines[1].contains(" ro,"), "/sys is read-only: {lines:?}");
    assert!(lines[2].contains("Read-only file system"), "{lines:?}");
    assert!(lines[3].contains("Read-only file system"), "{lines:?}");
    // A fresh network namespace: loopback only.
    assert_eq!(&lines[4..], ["lo"], "{lines:?}");
}

#[tokio::test]
async fn insecure_needs_the_entitlement() {
    let f = fixture().await;
    let mut req = f.req(&["true"]);
    req.insecure_root_capabilities = true;
    assert!(f.exec.authorize(&req).is_err());
    let err = f.exec.run(req).await.unwrap_err();
    assert!(
        err.to_string().contains("security.insecure is not allowed"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn insecure_gets_the_engines_capabilities_and_a_writable_sys() {
    let f = fixture_with(|o| o.allow_insecure = true).await;
    let mut req = f.req(&[
        "sh",
        "-c",
        "cat /proc/self/status; echo ===; grep ' /sys ' /proc/mounts; \
         cat /proc/timer_list | wc -c; ls /dev",
    ]);
    req.insecure_root_capabilities = true;
    let out = f.exec.run(req).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (status, rest) = stdout.split_once("===\n").unwrap();
    let engine = std::fs::read_to_string("/proc/self/status").unwrap();
    let expected = cap_line(&engine, "CapEff") & cap_line(&engine, "CapBnd");
    assert_eq!(cap_line(status, "CapEff"), expected, "{status}");
    assert_eq!(cap_line(status, "CapBnd"), expected);
    assert_eq!(cap_line(status, "CapAmb"), expected);
    let rest: Vec<&str> = rest.lines().collect();
    assert!(rest[0].contains(" rw,"), "/sys is writable: {rest:?}");
    assert_ne!(rest[1].trim(), "0", "/proc/timer_list is not masked");
    if Path::new("/dev/fuse").exists() {
        assert!(rest.contains(&"fuse"), "{rest:?}");
    }

    // The same executor still runs default execs in the default sandbox.
    let out = f
        .exec
        .run(f.req(&["cat", "/proc/self/status"]))
        .await
        .unwrap();
    assert_eq!(cap_line(&text(&out.stdout), "CapEff"), mask(&DEFAULT_CAPS));
}

#[tokio::test]
async fn init_is_pid_1_and_reaps_orphans() {
    let f = fixture().await;
    // The subshell exits at once, orphaning its sleep to PID 1, which must reap it.
    let out = f
        .sh(
            "tr '\\0' ' ' < /proc/1/cmdline; echo; (sleep 0.2 &); sleep 0.8; \
             for s in /proc/[0-9]*/stat; do cat $s 2>/dev/null; echo; done",
        )
        .await;
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert!(
        lines.next().unwrap().starts_with("/.init -- sh -c"),
        "{stdout}"
    );
    for stat in lines.filter(|l| !l.is_empty()) {
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]);
        assert_ne!(state, Some("Z"), "zombie left: {stat}");
    }
    // The init stub is gone from the rootfs afterwards.
    assert!(!f.rootfs.join(".init").exists());

    let mut req = f.req(&["sh", "-c", "echo $$"]);
    req.no_init = true;
    assert_eq!(text(&f.exec.run(req).await.unwrap().stdout), "1\n");
}

#[tokio::test]
async fn oom_kill_is_detected() {
    let f = fixture().await;
    let mut req = f.req(&[
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    ]);
    req.memory_limit = Some(32 << 20);
    let out = f.exec.run(req).await.unwrap();
    assert!(
        out.oom_killed,
        "exit {} {}",
        out.exit_code,
        text(&out.stderr)
    );
    assert_eq!(out.exit_code, 137);

    // The limit alone reports nothing.
    let mut req = f.req(&[
        "sh",
        "-c",
        "x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ${#x}",
    ]);
    req.memory_limit = Some(32 << 20);
    let out = f.exec.run(req).await.unwrap();
    assert_eq!((out.exit_code, text(&out.stdout)), (0, "1000000\n".into()));
    assert!(!out.oom_killed);
}

/// The exec cgroups of this executor, in every hierarchy.
fn our_cgroups(exec: &Executor) -> Vec<PathBuf> {
    let prefix = format!("{}-", exec.id_prefix());
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "dagger-exec") {
                for c in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    if c.file_name().to_string_lossy().starts_with(&prefix) {
                        found.push(c.path());
                    }
                }
            } else if p.components().count() < 9 {
                dirs.push(p);
            }
        }
    }
    found
}

fn processes_with_cmdline(needle: &[u8]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c == needle)
        .count()
}

fn runc_list(f: &Fixture) -> String {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(f.exec.runc_root())
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success());
    text(&out.stdout)
}

fn assert_clean(f: &Fixture, needle: &[u8], case: &str) {
    assert_eq!(
        runc_list(f).trim(),
        "",
        "{case}: runc still lists a container"
    );
    assert_eq!(
        std::fs::read_dir(f.exec.runc_root()).unwrap().count(),
        0,
        "{case}"
    );
    for dir in ["bundles", "output"] {
        let left = std::fs::read_dir(f.state().join(dir)).unwrap().count();
        assert_eq!(left, 0, "{case}: {dir}");
    }
    assert_eq!(
        processes_with_cmdline(needle),
        0,
        "{case}: the process survived"
    );
    assert!(
        !f.rootfs.join(".init").exists(),
        "{case}: the init stub is left"
    );
    assert_eq!(our_cgroups(&f.exec), Vec::<PathBuf>::new(), "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_kills_and_removes_the_container() {
    let f = fixture().await;
    // Early drops race runc's own container creation; later ones find it running.
    for (i, delay) in [200u64, 0, 5, 15, 40, 80].into_iter().enumerate() {
        let secs = format!("{}", 1000 + i);
        let needle = format!("sleep\0{secs}\0").into_bytes();
        let run = f.exec.run(f.req(&["sleep", &secs]));
        let r = tokio::time::timeout(Duration::from_millis(delay), run).await;
        assert!(r.is_err(), "sleep {secs} finished?");
        tokio::time::timeout(Duration::from_secs(20), f.exec.wait_idle())
            .await
            .expect("cleanup finishes");
        assert_eq!(f.exec.active(), 0);
        assert_clean(&f, &needle, &format!("dropped after {delay} ms"));
    }

    // Dropped while its output was being spilled to disk.
    let mut req = f.req(&["sh", "-c", "yes | head -c 3000000; exec sleep 1010"]);
    req.output_limit = 1000;
    let r = tokio::time::timeout(Duration::from_millis(300), f.exec.run(req)).await;
    assert!(r.is_err());
    f.exec.wait_idle().await;
    assert_clean(&f, b"sleep\x001010\x00", "dropped while spilling");
}

#[test]
fn runtime_shutdown_cleans_up_synchronously() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(fixture());
    let exec = f.exec.clone();
    let req = f.req(&["sleep", "1999"]);
    let running = rt.spawn(async move { exec.run(req).await });
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    assert_eq!(runc_list(&f).lines().count(), 1, "the container is running");
    // Dropping the runtime drops the exec task mid-run: cleanup must still happen.
    drop(running);
    drop(rt);
    assert_clean(&f, b"sleep\x001999\x00", "runtime dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallelism_bounds_running_containers() {
    let f = fixture_with(|o| o.max_parallelism = 2).await;
    let root = f.exec.runc_root().to_path_buf();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut max = 0;
        loop {
            let n = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
            max = max.max(n);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(3)) => {}
                _ = &mut stop_rx => return max,
            }
        }
    });
    let start = Instant::now();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let exec = f.exec.clone();
            let req = f.req(&["sleep", "0.3"]);
            tokio::spawn(async move { exec.run(req).await })
        })
        .collect();
    for r in runs {
        assert_eq!(r.await.unwrap().unwrap().exit_code, 0);
    }
    let elapsed = start.elapsed();
    stop_tx.send(()).unwrap();
    let max = sampler.await.unwrap();
    assert!(max <= 2, "{max} containers at once");
    assert_eq!(max, 2, "the sampler saw the containers");
    // Six 0.3 s sleeps two at a time take at least three waves: a lower bound only, which
    // load can never break.
    assert!(
        elapsed >= Duration::from_millis(900),
        "{elapsed:?}: three waves of two"
    );
}

#[tokio::test]
async fn output_over_the_limit_keeps_the_tail_and_a_full_copy() {
    let f = fixture().await;
    let mut req = f.req(&[
        "sh",
        "-c",
        "head -c 300000 /dev/zero | tr '\\0' x; echo END; echo small >&2",
    ]);
    req.output_limit = 1000;
    let out = f.exec.run(req).await.unwrap();
    assert!(out.stdout_truncated && !out.stderr_truncated && out.combined_truncated);
    assert_eq!(out.stdout.len(), 1000);
    assert!(text(&out.stdout).ends_with("xxxxEND\n"));
    assert_eq!(text(&out.stderr), "small\n");
    assert!(out.stderr_file.is_none());
    let file = out.stdout_file.as_ref().expect("full copy");
    assert_eq!(file.len(), 300_004);
    let full = std::fs::read(file.path()).unwrap();
    assert_eq!(full.len(), 300_004);
    assert!(full[..300_000].iter().all(|b| *b == b'x'));
    let path = file.path().to_path_buf();
    drop(out);
    assert!(!path.exists(), "the full copy is removed with the output");
}

#[tokio::test]
async fn network_files_and_extra_mounts_leave_no_stubs() {
    let f = fixture().await;
    let host = f.dir.path().join("host");
    std::fs::create_dir_all(host.join("cache")).unwrap();
    std::fs::write(host.join("resolv.conf"), "nameserver 10.87.0.1\n").unwrap();
    std::fs::write(host.join("hosts"), "127.0.0.1 localhost dagger\n").unwrap();
    std::fs::write(host.join("secret"), "s3cret").unwrap();
    let mut req = f.req(&[
        "sh",
        "-c",
        "cat /etc/resolv.conf /etc/hosts /run/secrets/token; echo >> /etc/hosts || echo ro; \
         echo cached > /cache/v; cat /proc/1/cmdline >/dev/null",
    ]);
    req.resolv_conf = Some(host.join("resolv.conf"));
    req.hosts = Some(host.join("hosts"));
    req.extra_mounts = vec![
        bind_mount(&host.join("cache"), "/cache", false),
        bind_mount(&host.join("secret"), "/run/secrets/token", true),
    ];
    let out = f.exec.run(req).await.unwrap();
    assert_eq!(
        text(&out.stdout),
        "nameserver 10.87.0.1\n127.0.0.1 localhost dagger\ns3cretro\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("cache/v")).unwrap(),
        "cached\n"
    );
    // Every mount point the executor had to create is gone again; /etc existed already.
    for stub in ["etc/resolv.conf", "etc/hosts", "cache", "run", ".init"] {
        assert!(!f.rootfs.join(stub).exists(), "{stub} left in the rootfs");
    }
    assert!(f.rootfs.join("etc/passwd").exists());
}

#[tokio::test]
async fn runc_version_and_warnings() {
    let f = fixture().await;
    assert!(
        f.exec.runc_version().starts_with("1."),
        "{}",
        f.exec.runc_version()
    );
    let debian_1_1_5 = f.exec.runc_version().starts_with("1.1.5");
    if debian_1_1_5 {
        let w = f.exec.warnings().join("\n");
        assert!(w.contains("CVE-2024-21626") && w.contains("deb12u1"), "{w}");
        assert!(w.contains("CVE-2025-31133"), "{w}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path().join("state"));
    opts.runc = "/nonexistent/runc".into();
    let err = Executor::new(opts).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let mut opts = options(dir.path().join("state"));
    opts.init = Some("/bin/sh".into()); // dynamically linked
    let err = Executor::new(opts).await.err().unwrap();
    assert!(err.to_string().contains("static"), "{err}");
}

#[tokio::test]
async fn new_sweeps_what_a_crashed_engine_left() {
    let f = fixture().await;
    let state = f.state();
    // A bundle and a cgroup of an exec whose engine is gone.
    let dead = "999999-7-deadbeef";
    std::fs::create_dir_all(state.join("bundles").join(dead)).unwrap();
    std::fs::write(state.join("output").join("x.stdout"), "old").unwrap();
    let own_memory = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("4:memory:").map(str::to_string));
    let leftover = own_memory.map(|m| {
        let p = PathBuf::from(format!("/sys/fs/cgroup/memory{m}/dagger-exec/{dead}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    });
    let again = Executor::new(options(state.clone())).await.unwrap();
    assert_eq!(std::fs::read_dir(state.join("bundles")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(state.join("output")).unwrap().count(), 0);
    if let Some(p) = leftover {
        assert!(!p.exists(), "{} left", p.display());
    }
    assert_eq!(again.run(f.req(&["true"])).await.unwrap().exit_code, 0);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Informal: `cargo test -p dagger-integration-tests --test exec -- --ignored --nocapture`.
/// Median wall time of `/bin/true` through `Executor::run` against raw `runc run` of the
/// same bundle (the executor's own config.json, copied while it ran), interleaved so both see
/// the same machine load.
#[tokio::test]
#[ignore]
async fn latency_of_true_against_raw_runc() {
    let f = fixture().await;
    let runs = 20;
    // Grab a config.json of the same shape.
    let bundles = f.state().join("bundles");
    let exec = f.exec.clone();
    let req = f.req(&["sleep", "1"]);
    let sleeper = tokio::spawn(async move { exec.run(req).await });
    let config = loop {
        let found = std::fs::read_dir(&bundles)
            .unwrap()
            .flatten()
            .map(|e| e.path().join("config.json"))
            .find(|p| p.exists());
        if let Some(p) = found {
            tokio::time::sleep(Duration::from_millis(50)).await;
            break std::fs::read_to_string(p).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    sleeper.await.unwrap().unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&config).unwrap();
    spec["process"]["args"] = serde_json::json!(["/.init", "--", "true"]);
    let raw = f.dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let raw_run = |i: usize| {
        spec["linux"]["cgroupsPath"] = format!("dagger-bench-{}-{i}", std::process::id()).into();
        std::fs::write(raw.join("config.json"), spec.to_string()).unwrap();
        // /.init must exist as a mount point: the executor creates and removes it per run.
        std::fs::write(f.rootfs.join(".init"), "").unwrap();
        let t = Instant::now();
        let status = std::process::Command::new("runc")
            .arg("--root")
            .arg(raw.join("state"))
            .args(["run", "--bundle"])
            .arg(&raw)
            .arg(format!("bench-{i}"))
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        let took = t.elapsed();
        std::fs::remove_file(f.rootfs.join(".init")).unwrap();
        assert!(status.success());
        took
    };
    let mut raw_run = raw_run;
    for i in 0..3 {
        f.exec.run(f.req(&["true"])).await.unwrap(); // warm caches
        raw_run(1000 + i);
    }
    let (mut executor, mut direct, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let out = f.exec.run(f.req(&["true"])).await.unwrap();
        let took = t.elapsed();
        assert_eq!(out.exit_code, 0);
        executor.push(took);
        overhead.push(took.saturating_sub(out.duration));
        direct.push(raw_run(i));
    }
    println!(
        "/bin/true, median of {runs}: Executor::run {:?}, raw runc run {:?}; \
         executor work outside runc {:?}",
        median(executor),
        median(direct),
        median(overhead)
    );
}
