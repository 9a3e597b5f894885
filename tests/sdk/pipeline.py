"""The real Python SDK against our engine, through `dagger run` or a spawned `dagger session`.

Run by tests/tests/sdk_session.rs with SDK_TEST_IMAGE set to a busybox image on a registry on
127.0.0.1. Prints one `ok: <check>` line per check and `ALL OK` at the end; any failure raises.
"""

import os
import sys

import anyio
import dagger
from dagger import dag

IMAGE = os.environ["SDK_TEST_IMAGE"]


def ok(name: str, cond: bool, detail: object) -> None:
    if not cond:
        raise AssertionError(f"{name}: {detail!r}")
    print(f"ok: {name}", flush=True)


async def main() -> None:
    # log_output forwards the session's stderr, which should stay empty.
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        base = dag.container().from_(IMAGE)

        out = await base.with_exec(["echo", "hello from python"]).stdout()
        ok("from + withExec + stdout", out == "hello from python\n", out)

        ctr = (
            base.with_env_variable("GREETING", "hi there")
            .with_workdir("/work")
            .with_exec(["sh", "-c", 'echo "$GREETING" > greeting.txt; mkdir sub; touch sub/a'])
        )
        contents = await ctr.file("/work/greeting.txt").contents()
        ok("env + workdir + file contents", contents == "hi there\n", contents)
        entries = await ctr.directory("/work").entries()
        ok("directory entries", sorted(entries) == ["greeting.txt", "sub/"], entries)
        pwd = await ctr.with_exec(["pwd"]).stdout()
        ok("workdir is the exec cwd", pwd == "/work\n", pwd)
        ok("envVariable", await ctr.env_variable("GREETING") == "hi there", "GREETING")

        failing = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]
        try:
            await base.with_exec(failing).stdout()
        except dagger.ExecError as e:
            print(f"ExecError: {e.message} | exit={e.exit_code} stdout={e.stdout!r} stderr={e.stderr!r}")
            ok("ExecError cmd", e.command == failing, e.command)
            ok("ExecError exit code", e.exit_code == 3, e.exit_code)
            ok("ExecError stdout", e.stdout.strip() == "to-stdout", e.stdout)
            ok("ExecError stderr", e.stderr.strip() == "to-stderr", e.stderr)
        else:
            raise AssertionError("a failing withExec did not raise ExecError")

        # sync() returns a container that continues from `node(id:)`.
        synced = await base.with_exec(["sh", "-c", "echo synced"]).sync()
        out = await synced.stdout()
        ok("sync + node", out == "synced\n", out)
        out = await synced.with_exec(["echo", "after sync"]).stdout()
        ok("chain after sync", out == "after sync\n", out)

        envs = await base.with_env_variable("FOO", "bar").env_variables()
        pairs = {await e.name(): await e.value() for e in envs}
        ok("envVariables", pairs.get("FOO") == "bar" and "PATH" in pairs, pairs)

        cid = await base.with_env_variable("FROM_ID", "loaded").id()
        # id() returns a plain str; the loader's beartype check wants the ContainerID scalar.
        loaded = dag.load_container_from_id(dagger.ContainerID(cid))
        out = await loaded.with_exec(["sh", "-c", 'echo "$FROM_ID"']).stdout()
        ok("load_container_from_id", out == "loaded\n", out)

    print("ALL OK", flush=True)


anyio.run(main)
