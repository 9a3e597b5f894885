//! The real Python SDK (`dagger-io` from PyPI, installed by scripts/test.sh into .test-venv)
//! connects to the engine, introspects its schema and reads `version`.
//!
//! The SDK's session layer arrives with `dagger session`; until then the SDK is pointed at
//! the engine's TCP listener directly through DAGGER_SESSION_PORT/DAGGER_SESSION_TOKEN.

use dagger_integration_tests::*;
use std::process::Command;

fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("DAGGER_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join(".test-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} is missing: scripts/test.sh installs the pinned SDKs (tests/sdk/requirements.txt) into {}",
        py.display(),
        venv.display()
    );
    py
}

#[test]
fn python_sdk_connects_and_reads_version() {
    let py = python();
    let engine = Engine::start(EngineOptions {
        tcp: true,
        ..Default::default()
    });
    let script = r#"
import anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection(dagger.Config(log_output=None)):
        print("VERSION=" + await dag.version())
        print("PLATFORM=" + str(await dag.default_platform()))

anyio.run(main)
"#;
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .env("DAGGER_SESSION_PORT", engine.tcp_port.unwrap().to_string())
        .env("DAGGER_SESSION_TOKEN", "test-token")
        .env_remove("_EXPERIMENTAL_DAGGER_CLI_BIN")
        .output()
        .unwrap();
    let so = sdk::stdout_of_success(&out, &engine);
    assert!(
        so.contains(&format!("VERSION=v{}", env!("CARGO_PKG_VERSION"))),
        "{so}"
    );
    assert!(so.contains("PLATFORM=linux/"), "{so}");
}
