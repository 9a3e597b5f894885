// The real TypeScript SDK against our engine, through `dagger run` or a spawned
// `dagger session` (which the SDK stops with SIGTERM when `connection` returns).
//
// Run by tests/tests/sdk_session.rs with SDK_TEST_IMAGE set to a busybox image on a registry on
// 127.0.0.1. Prints one `ok: <check>` line per check and `ALL OK` at the end; any failure throws.
import assert from "node:assert/strict"
import { connection, dag, ExecError } from "@dagger.io/dagger"

const IMAGE = process.env.SDK_TEST_IMAGE

function ok(name, check) {
  check()
  console.log(`ok: ${name}`)
}

await connection(
  async () => {
    const base = dag.container().from(IMAGE)

    const hello = await base.withExec(["echo", "hello from node"]).stdout()
    ok("from + withExec + stdout", () => assert.equal(hello, "hello from node\n"))

    const ctr = base
      .withEnvVariable("GREETING", "hi there")
      .withWorkdir("/work")
      .withExec(["sh", "-c", 'echo "$GREETING" > greeting.txt; mkdir sub; touch sub/a'])
    const contents = await ctr.file("/work/greeting.txt").contents()
    ok("env + workdir + file contents", () => assert.equal(contents, "hi there\n"))
    const entries = await ctr.directory("/work").entries()
    ok("directory entries", () => assert.deepEqual([...entries].sort(), ["greeting.txt", "sub/"]))
    const pwd = await ctr.withExec(["pwd"]).stdout()
    ok("workdir is the exec cwd", () => assert.equal(pwd, "/work\n"))
    const greeting = await ctr.envVariable("GREETING")
    ok("envVariable", () => assert.equal(greeting, "hi there"))

    const failing = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]
    let raised
    try {
      await base.withExec(failing).stdout()
    } catch (e) {
      raised = e
    }
    ok("ExecError raised", () => assert.ok(raised instanceof ExecError, String(raised)))
    console.log(
      `ExecError: ${raised.message} | exit=${raised.exitCode} stdout=${JSON.stringify(raised.stdout)} stderr=${JSON.stringify(raised.stderr)}`,
    )
    ok("ExecError cmd", () => assert.deepEqual(raised.cmd, failing))
    ok("ExecError exit code", () => assert.equal(raised.exitCode, 3))
    ok("ExecError stdout", () => assert.equal(raised.stdout.trim(), "to-stdout"))
    ok("ExecError stderr", () => assert.equal(raised.stderr.trim(), "to-stderr"))

    // sync() returns a container that continues from `node(id:)`.
    const synced = await base.withExec(["sh", "-c", "echo synced"]).sync()
    const syncedOut = await synced.stdout()
    ok("sync + node", () => assert.equal(syncedOut, "synced\n"))
    const after = await synced.withExec(["echo", "after sync"]).stdout()
    ok("chain after sync", () => assert.equal(after, "after sync\n"))

    const envs = await base.withEnvVariable("FOO", "bar").envVariables()
    const pairs = {}
    for (const e of envs) {
      pairs[await e.name()] = await e.value()
    }
    ok("envVariables", () => {
      assert.equal(pairs.FOO, "bar")
      assert.ok("PATH" in pairs, JSON.stringify(pairs))
    })

    const id = await base.withEnvVariable("FROM_ID", "loaded").id()
    const loaded = await dag.loadContainerFromID(id).withExec(["sh", "-c", 'echo "$FROM_ID"']).stdout()
    ok("loadContainerFromID", () => assert.equal(loaded, "loaded\n"))
  },
  // Forwards the session's stderr, which should stay empty.
  { LogOutput: process.stderr },
)

console.log("ALL OK")
