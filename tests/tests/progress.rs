//! Live progress (issue 6): the engine streams operation events on the session channel and
//! the CLI prints them on stderr (`--progress=plain` here: timestamped lines), never on
//! stdout, which stays the program's or the query's.

use dagger_integration_tests::sdk::*;
use dagger_integration_tests::*;
use std::process::{Command, Output, Stdio};

fn dagger_query(engine: &Engine, document: &str, progress: &str) -> Output {
    let host = engine.runner_host();
    dagger_cli(
        &["query", &format!("--progress={progress}")],
        document,
        &[("_EXPERIMENTAL_DAGGER_RUNNER_HOST", host.as_str())],
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `HH:MM:SS.mmm [N] ...`
fn is_progress_line(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 16
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && b[12] == b' '
        && b[13] == b'['
        && l[..12]
            .chars()
            .all(|c| c.is_ascii_digit() || c == ':' || c == '.')
}

#[test]
fn dagger_query_shows_execs_pulls_and_cache_hits_on_stderr() {
    let fx = SdkFixture::start();
    let doc = format!(
        r#"{{ container {{ from(address: "{}") {{ withExec(args: ["sh", "-c", "echo progress-test"]) {{ stdout }} }} }} }}"#,
        fx.image
    );
    let first = dagger_query(&fx.engine, &doc, "plain");
    let (out1, err1) = (text(&first.stdout), text(&first.stderr));
    assert!(
        first.status.success(),
        "{out1}\n{err1}\n{}",
        fx.engine.log()
    );
    let v: serde_json::Value = serde_json::from_str(&out1).unwrap();
    assert_eq!(
        v["container"]["from"]["withExec"]["stdout"], "progress-test\n",
        "stdout carries the result only"
    );
    let lines: Vec<&str> = err1.lines().collect();
    assert!(
        lines.iter().all(|l| is_progress_line(l)),
        "every stderr line is a progress line:\n{err1}"
    );
    let exec = r#"withExec sh -c "echo progress-test""#;
    let from = format!("from {}", fx.image);
    let has = |ls: &[&str], needle: &str, suffix: &str| {
        ls.iter().any(|l| l.contains(needle) && l.contains(suffix))
    };
    assert!(
        lines.iter().any(|l| l.ends_with(exec)),
        "a start line for the exec:\n{err1}"
    );
    assert!(has(&lines, exec, " DONE "), "exec DONE:\n{err1}");
    assert!(has(&lines, &from, " DONE "), "from DONE:\n{err1}");
    // Each layer download ends with its size in bytes.
    let pulls: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("] pull sha256:") && l.contains(" DONE "))
        .collect();
    assert!(!pulls.is_empty(), "pull lines:\n{err1}");
    for p in &pulls {
        assert!(
            p.contains(" / ") && (p.contains(" B ") || p.contains("KiB") || p.contains("MiB")),
            "a pull line without bytes: {p}"
        );
    }

    // The same pipeline again, in a new session: all cached, same stdout.
    let second = dagger_query(&fx.engine, &doc, "plain");
    let (out2, err2) = (text(&second.stdout), text(&second.stderr));
    assert!(second.status.success(), "{err2}");
    assert_eq!(out2, out1);
    let lines2: Vec<&str> = err2.lines().collect();
    assert!(
        lines2
            .iter()
            .any(|l| l.ends_with(&format!("{exec} CACHED"))),
        "exec CACHED on the second run:\n{err2}"
    );
    assert!(!has(&lines2, exec, " DONE "), "ran again:\n{err2}");
    assert!(!err2.contains("] pull "), "pulled again:\n{err2}");

    // Quiet: nothing on stderr at all.
    let quiet = dagger_query(&fx.engine, &doc, "quiet");
    assert!(quiet.status.success());
    assert_eq!(text(&quiet.stderr), "");
    assert_eq!(text(&quiet.stdout), out1);
}

#[test]
fn failures_show_as_errors_and_secrets_never_show() {
    let fx = SdkFixture::start();
    let secret = fx
        .engine
        .query_ok(r#"{ setSecret(name: "tok", plaintext: "s3cr3t-value-42") { id } }"#);
    let id = secret["setSecret"]["id"].as_str().unwrap().to_string();
    let doc = format!(
        r#"{{ container {{ from(address: "{}") {{ withSecretVariable(name: "TOKEN", secret: "{id}") {{ withExec(args: ["sh", "-c", "test -n \"$TOKEN\" && echo has-token"]) {{ stdout }} }} }} }} }}"#,
        fx.image
    );
    let ok = dagger_query(&fx.engine, &doc, "plain");
    let err = text(&ok.stderr);
    assert!(ok.status.success(), "{err}\n{}", fx.engine.log());
    assert!(
        err.contains("withExec sh -c") && err.contains(" DONE "),
        "{err}"
    );
    assert!(
        !err.contains("s3cr3t-value-42"),
        "a secret in progress:\n{err}"
    );

    let failing = format!(
        r#"{{ container {{ from(address: "{}") {{ withExec(args: ["sh", "-c", "exit 7"]) {{ stdout }} }} }} }}"#,
        fx.image
    );
    let out = dagger_query(&fx.engine, &failing, "plain");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.lines().any(|l| is_progress_line(l)
            && l.contains(r#"withExec sh -c "exit 7" ERROR"#)
            && l.contains("exit code: 7")),
        "{err}"
    );
}

#[test]
fn dagger_run_progress_leaves_the_program_stdout_alone() {
    let fx = SdkFixture::start();
    let python = python();
    let run = || {
        let home = tempfile::tempdir().unwrap();
        let out = Command::new(bin("dagger"))
            .args(["run", "--progress=plain"])
            .arg(&python)
            .arg(sdk_dir().join("progress.py"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("LANG", "C.UTF-8")
            .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", fx.engine.runner_host())
            .env(
                "_EXPERIMENTAL_DAGGER_CLI_BIN",
                "/nonexistent/dagger-must-not-run",
            )
            .env("SDK_TEST_IMAGE", &fx.image)
            .current_dir(sdk_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status, text(&out.stdout), text(&out.stderr))
    };
    let (s1, out1, err1) = run();
    assert!(s1.success(), "{out1}\n{err1}\n{}", fx.engine.log());
    assert_eq!(
        out1, "result: progress from python\n",
        "stdout is the program's only"
    );
    let exec = r#"withExec sh -c "echo progress from python""#;
    assert!(
        err1.lines()
            .any(|l| l.contains(exec) && l.contains(" DONE ")),
        "{err1}"
    );
    let (s2, out2, err2) = run();
    assert!(s2.success(), "{err2}");
    assert_eq!(out2, out1);
    assert!(
        err2.lines().any(|l| l.ends_with(&format!("{exec} CACHED"))),
        "{err2}"
    );
}

#[test]
fn on_a_terminal_progress_is_a_live_display() {
    // `script` gives the CLI a pseudo-terminal (util-linux, present on every Debian system).
    let script = dagger_integration_tests::registry::require_binary("script", "bsdutils");
    let engine = Engine::start(EngineOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("q.graphql");
    std::fs::write(
        &doc,
        format!(
            r#"{{ directory {{ withNewFile(path: "a", contents: "x") {{ export(path: "{}") }} }} }}"#,
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let out = Command::new(script)
        .arg("-qec")
        .arg(format!(
            "{} query --doc {}",
            bin("dagger").display(),
            doc.display()
        ))
        .arg("/dev/null")
        .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", engine.runner_host())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    // `auto` on a terminal: redrawn spinner lines (erase-line sequences), then the final line.
    assert!(screen.contains("\u{1b}[2K"), "no live redraw: {screen:?}");
    assert!(
        screen.contains("Directory.export to ") && screen.contains(" DONE "),
        "{screen:?}"
    );
    assert!(dir.path().join("out/a").exists());
}

#[test]
fn each_session_sees_only_its_own_work() {
    let fx = SdkFixture::start();
    let mut a = SessionProcess::start(&fx.engine, &["--progress=plain"]);
    let mut b = SessionProcess::start(&fx.engine, &["--progress", "plain"]);
    let mut quiet = SessionProcess::start(&fx.engine, &[]);
    let q = |s: &SessionProcess, marker: &str| {
        let r = s.query(
            Some(&s.auth()),
            &format!(
                r#"{{ container {{ from(address: "{}") {{ withExec(args: ["echo", "{marker}"]) {{ stdout }} }} }} }}"#,
                fx.image
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.json().get("errors").is_none(), "{}", r.body);
    };
    q(&a, "only-in-a");
    q(&b, "only-in-b");
    q(&quiet, "only-in-quiet");
    let (sa, ea) = a.close_and_wait();
    let (sb, eb) = b.close_and_wait();
    let (sq, eq) = quiet.close_and_wait();
    assert!(sa.success() && sb.success() && sq.success());
    assert!(
        ea.contains("withExec echo only-in-a DONE") && !ea.contains("only-in-b"),
        "{ea}"
    );
    assert!(
        eb.contains("withExec echo only-in-b DONE") && !eb.contains("only-in-a"),
        "{eb}"
    );
    assert!(!ea.contains("only-in-quiet") && !eb.contains("only-in-quiet"));
    assert_eq!(eq, "", "dagger session is quiet by default");
}
