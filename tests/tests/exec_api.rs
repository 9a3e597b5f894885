//! `withExec` through GraphQL on the real engine with real runc: outputs and exit codes,
//! stdin, env, workdir, users, snapshots between execs, networking, entitlements, the sandbox,
//! cancellation, and cleanup.

use dagger_integration_tests::fixtures::busybox_engine;
use dagger_integration_tests::registry::TestRegistry;
use dagger_integration_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

struct Fixture {
    _reg: TestRegistry,
    engine: Engine,
    image: String,
}

fn fixture(config: &str) -> Fixture {
    let (reg, engine, image) = busybox_engine(config);
    Fixture {
        _reg: reg,
        engine,
        image,
    }
}

impl Fixture {
    /// `{ container { from(address: IMAGE) { <chain> } } }`, returning the `from` object.
    fn run(&self, chain: &str) -> serde_json::Value {
        let data = self.engine.query_ok(&format!(
            r#"{{ container {{ from(address: "{}") {{ {chain} }} }} }}"#,
            self.image
        ));
        data["container"]["from"].clone()
    }

    fn run_err(&self, chain: &str) -> serde_json::Value {
        let v = self.engine.query(&format!(
            r#"{{ container {{ from(address: "{}") {{ {chain} }} }} }}"#,
            self.image
        ));
        assert!(v.get("errors").is_some(), "expected an error: {v}");
        v["errors"][0].clone()
    }
}

const INSECURE: &str = "insecure-entitlements = [\"security.insecure\"]\n";

#[test]
fn stdout_stderr_and_exit_codes() {
    let f = fixture(INSECURE);
    let c = f.run(
        r#"withExec(args: ["sh", "-c", "echo out; echo err >&2; exit 0"]) { stdout stderr exitCode combinedOutput }"#,
    );
    let e = &c["withExec"];
    assert_eq!(e["stdout"], "out\n");
    assert_eq!(e["stderr"], "err\n");
    assert_eq!(e["exitCode"], 0);
    let combined = e["combinedOutput"].as_str().unwrap();
    assert!(
        combined.contains("out\n") && combined.contains("err\n"),
        "{combined}"
    );

    let err = f.run_err(
        r#"withExec(args: ["sh", "-c", "echo partial; echo bad >&2; exit 3"]) { stdout }"#,
    );
    let ext = &err["extensions"];
    assert_eq!(ext["_type"], "EXEC_ERROR");
    assert_eq!(
        ext["cmd"],
        serde_json::json!(["sh", "-c", "echo partial; echo bad >&2; exit 3"])
    );
    assert_eq!(ext["exitCode"], 3);
    assert_eq!(ext["stdout"], "partial");
    assert_eq!(ext["stderr"], "bad");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("did not complete successfully") && msg.contains("exit code: 3"),
        "{msg}"
    );

    let c = f.run(r#"withExec(args: ["sh", "-c", "exit 5"], expect: FAILURE) { exitCode }"#);
    assert_eq!(c["withExec"]["exitCode"], 5);
    let c = f.run(r#"withExec(args: ["true"], expect: ANY) { exitCode }"#);
    assert_eq!(c["withExec"]["exitCode"], 0);
    let err = f.run_err(r#"withExec(args: ["true"], expect: FAILURE) { exitCode }"#);
    assert_eq!(err["extensions"]["_type"], "EXEC_ERROR");
    let err = f.run_err(r#"withExec(args: ["/no/such/binary"]) { stdout }"#);
    assert!(
        err["message"].as_str().unwrap().contains("/no/such/binary"),
        "{err}"
    );
    let err = f.run_err(r#"stdout"#);
    assert!(
        err["message"].as_str().unwrap().contains("withExec"),
        "{err}"
    );
}

#[test]
fn stdin_env_workdir_and_users() {
    let f = fixture(INSECURE);
    let c = f.run(r#"withExec(args: ["cat"], stdin: "hello\nworld") { stdout }"#);
    assert_eq!(c["withExec"]["stdout"], "hello\nworld");
    let c = f.run(
        r#"withEnvVariable(name: "GREETING", value: "hi") {
             withEnvVariable(name: "MSG", value: "${GREETING} there", expand: true) {
               withExec(args: ["sh", "-c", "echo $MSG; echo $PATH"]) { stdout }
               expanded: withExec(args: ["echo", "$GREETING"], expand: true) { stdout }
               literal: withExec(args: ["echo", "$GREETING"]) { stdout } } }"#,
    );
    let e = &c["withEnvVariable"]["withEnvVariable"];
    let out = e["withExec"]["stdout"].as_str().unwrap();
    assert!(out.starts_with("hi there\n"), "{out}");
    assert!(out.contains("/bin"), "default PATH: {out}");
    assert_eq!(e["expanded"]["stdout"], "hi\n");
    assert_eq!(e["literal"]["stdout"], "$GREETING\n");
    let c = f.run(r#"withWorkdir(path: "/work/dir") { withExec(args: ["pwd"]) { stdout } }"#);
    assert_eq!(c["withWorkdir"]["withExec"]["stdout"], "/work/dir\n");
    let c = f.run(
        r#"a: withUser(name: "65534") { withExec(args: ["id", "-u"]) { stdout } }
           b: withUser(name: "65534:65534") { withExec(args: ["id"]) { stdout } }
           c: withUser(name: "root") { withExec(args: ["id", "-u"]) { stdout } }
           d: withExec(args: ["id", "-u"]) { stdout }"#,
    );
    assert_eq!(c["a"]["withExec"]["stdout"], "65534\n");
    assert!(c["b"]["withExec"]["stdout"]
        .as_str()
        .unwrap()
        .contains("gid=65534"));
    assert_eq!(c["c"]["withExec"]["stdout"], "0\n");
    assert_eq!(c["d"]["stdout"], "0\n");
    let err = f.run_err(r#"withUser(name: "nosuchuser") { withExec(args: ["true"]) { stdout } }"#);
    assert!(
        err["message"].as_str().unwrap().contains("nosuchuser"),
        "{err}"
    );
}

#[test]
fn execs_build_on_each_other_and_branches_stay_apart() {
    let f = fixture(INSECURE);
    let c = f.run(
        r#"withExec(args: ["sh", "-c", "echo one > /base.txt"]) {
             left: withExec(args: ["sh", "-c", "echo L > /left.txt"]) {
               withExec(args: ["sh", "-c", "cat /base.txt /left.txt; ls /right.txt 2>&1 || true"]) { stdout } }
             right: withExec(args: ["sh", "-c", "echo R > /right.txt; rm /base.txt"]) {
               withExec(args: ["sh", "-c", "ls /; cat /left.txt 2>&1 || true"]) { stdout }
               file(path: "/right.txt") { contents } } }"#,
    );
    let left = c["withExec"]["left"]["withExec"]["stdout"]
        .as_str()
        .unwrap();
    assert!(left.starts_with("one\nL\n"), "{left}");
    assert!(left.contains("No such file"), "{left}");
    let right = c["withExec"]["right"]["withExec"]["stdout"]
        .as_str()
        .unwrap();
    assert!(
        right.contains("right.txt") && !right.contains("base.txt") && !right.contains("left.txt\n"),
        "{right}"
    );
    assert_eq!(c["withExec"]["right"]["file"]["contents"], "R\n");
    let c = f.run(
        r#"withExec(args: ["sh", "-c", "echo hi"], redirectStdout: "/out.txt") {
             stdout file(path: "/out.txt") { contents } }"#,
    );
    assert_eq!(c["withExec"]["stdout"], "");
    assert_eq!(c["withExec"]["file"]["contents"], "hi\n");
}

#[test]
fn sandbox_fds_caps_and_masked_paths() {
    let f = fixture(INSECURE);
    let c = f.run(
        r#"fds: withExec(args: ["sh", "-c", "ls /proc/self/fd"]) { stdout }
           caps: withExec(args: ["sh", "-c", "grep CapEff /proc/self/status"]) { stdout }
           kcore: withExec(args: ["sh", "-c", "head -c1 /proc/kcore >/dev/null 2>&1 && echo readable || echo masked"]) { stdout }
           sys: withExec(args: ["sh", "-c", "touch /sys/x 2>/dev/null && echo rw || echo ro"]) { stdout }
           host: withExec(args: ["hostname"]) { stdout }
           dns: withExec(args: ["sh", "-c", "cat /etc/resolv.conf /etc/hosts"]) { stdout }
           pid1: withExec(args: ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"]) { stdout }"#,
    );
    // The shell's own fds: 0, 1, 2 and the directory ls reads (3); nothing inherited.
    let fds: Vec<&str> = c["fds"]["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(
        fds.len() <= 4 && fds.starts_with(&["0", "1", "2"]),
        "{fds:?}"
    );
    // containerd's default set: 0x00000000a80425fb.
    assert!(
        c["caps"]["stdout"]
            .as_str()
            .unwrap()
            .contains("00000000a80425fb"),
        "{}",
        c["caps"]["stdout"]
    );
    assert_eq!(c["kcore"]["stdout"], "masked\n");
    assert_eq!(c["sys"]["stdout"], "ro\n");
    assert_eq!(c["host"]["stdout"], "dagger\n");
    let dns = c["dns"]["stdout"].as_str().unwrap();
    assert!(
        dns.contains("nameserver") && dns.contains("localhost"),
        "{dns}"
    );
    assert!(
        c["pid1"]["stdout"].as_str().unwrap().contains(".init"),
        "{}",
        c["pid1"]["stdout"]
    );

    let c = f.run(
        r#"caps: withExec(args: ["sh", "-c", "grep CapEff /proc/self/status"], insecureRootCapabilities: true) { stdout }
           sys: withExec(args: ["sh", "-c", "grep -q ' /sys .*rw' /proc/mounts && echo rw || echo ro"], insecureRootCapabilities: true) { stdout }"#,
    );
    let caps = c["caps"]["stdout"].as_str().unwrap();
    let bnd = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = bnd
        .lines()
        .find(|l| l.starts_with("CapBnd"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        caps.contains(&bnd),
        "insecure gets the engine's bounding set {bnd}: {caps}"
    );
    assert_eq!(c["sys"]["stdout"], "rw\n");
}

#[test]
fn insecure_root_capabilities_need_the_entitlement() {
    let f = fixture("");
    let err = f.run_err(r#"withExec(args: ["true"], insecureRootCapabilities: true) { stdout }"#);
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("security.insecure is not allowed"), "{msg}");
    assert_eq!(err["extensions"]["code"], "PERMISSION_DENIED");
    let c = f.run(r#"withExec(args: ["echo", "fine"]) { stdout }"#);
    assert_eq!(c["withExec"]["stdout"], "fine\n");
}

/// An exec reaches an HTTP server on the engine's bridge address, i.e. through its own
/// network namespace and the bridge (a server the test runs, never an outside address).
#[test]
fn network_reaches_the_bridge() {
    let f = fixture(INSECURE);
    // Find the engine's gateway: the first exec tells us its default route.
    let c = f
        .run(r#"withExec(args: ["sh", "-c", "ip route | awk '/default/ {print $3}'"]) { stdout }"#);
    let gw = c["withExec"]["stdout"].as_str().unwrap().trim().to_string();
    assert!(gw.starts_with("10."), "{gw}");
    let listener = std::net::TcpListener::bind((gw.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
    });
    let c = f.run(&format!(
        r#"withExec(args: ["wget", "-q", "-O", "-", "http://{gw}:{port}/"]) {{ stdout }}"#
    ));
    assert_eq!(c["withExec"]["stdout"], "hello");
    server.join().unwrap();
}

#[test]
fn cancelled_query_kills_the_exec() {
    let f = fixture(INSECURE);
    // A sleep long enough to be unique on this machine, so pgrep finds only ours.
    let seconds = 1_000_000 + std::process::id();
    let marker = format!("sleep {seconds}");
    let query = format!(
        r#"{{"query":"{{ container {{ from(address: \"{}\") {{ withExec(args: [\"sleep\", \"{seconds}\"]) {{ stdout }} }} }} }}"}}"#,
        f.image
    );
    let mut stream = std::os::unix::net::UnixStream::connect(&f.engine.socket).unwrap();
    use std::io::Write;
    write!(
        stream,
        "POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{query}",
        query.len()
    )
    .unwrap();
    let running = || {
        Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running() {
        assert!(
            Instant::now() < deadline,
            "exec never started:\n{}",
            f.engine.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    while running() {
        assert!(
            Instant::now() < deadline,
            "exec still running after the client went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After an engine stops, nothing of its execs is left: mounts, network namespaces, veths,
/// its bridge.
#[test]
fn no_leaks_after_many_execs() {
    let mut f = fixture(INSECURE);
    for i in 0..20 {
        let c = f.run(&format!(r#"withExec(args: ["echo", "{i}"]) {{ stdout }}"#));
        assert_eq!(c["withExec"]["stdout"], format!("{i}\n"));
    }
    let root = f.engine.root.clone();
    let bridge = format!("{}0", f.engine.network_name);
    assert!(Command::new("ip")
        .args(["link", "show", "dev", &bridge])
        .output()
        .unwrap()
        .status
        .success());
    assert!(f.engine.terminate().success());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(root.to_str().unwrap()),
        "mounts left under {}",
        root.display()
    );
    // This engine's own bridge (and with it every veth on it) and NAT table are gone; other
    // engines' links on the machine are none of this test's business.
    let link = Command::new("ip")
        .args(["link", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert!(!link.status.success(), "bridge {bridge} left behind");
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !tables.lines().any(|l| l
            .trim_end()
            .ends_with(&format!(" {}", f.engine.network_name))),
        "nft table left behind: {tables}"
    );
    let netns = std::fs::read_dir(root.join("net"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(netns <= 2, "network namespace files left: {netns}");
}
