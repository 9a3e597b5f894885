"""Exports to the host with the real Python SDK (run by tests/tests/export.rs).

Writes under $HOME (a private temporary directory the test made) and checks what landed on
disk. Prints one `ok: <check>` line per check and `ALL OK` at the end; any failure raises.
"""

import os
import stat

import anyio
import dagger
from dagger import dag


def ok(name: str, cond: bool, detail: object) -> None:
    if not cond:
        raise AssertionError(f"{name}: {detail!r}")
    print(f"ok: {name}", flush=True)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def main() -> None:
    home = os.environ["HOME"]
    target = os.path.join(home, "exported")
    os.makedirs(target)
    with open(os.path.join(target, "stale.txt"), "w") as f:
        f.write("old")
    async with dagger.connection(dagger.Config()):
        d = (
            dag.directory()
            .with_new_file("a.txt", "alpha", permissions=0o640)
            .with_new_file("sub/run.sh", "#!/bin/sh\necho hi\n", permissions=0o755)
        )
        written = await d.export(target, wipe=True)
        ok("directory export returns the absolute path", written == target, written)
        with open(os.path.join(target, "a.txt")) as f:
            a = f.read()
        ok("exported contents", a == "alpha", a)
        modes = (mode(os.path.join(target, "a.txt")), mode(os.path.join(target, "sub/run.sh")))
        ok("exported modes", modes == (0o640, 0o755), [oct(m) for m in modes])
        ok("wipe removes stale files", sorted(os.listdir(target)) == ["a.txt", "sub"], os.listdir(target))

        single = os.path.join(home, "single.txt")
        out = await d.file("sub/run.sh").export(single)
        with open(single) as f:
            body = f.read()
        ok("file export", out == single and body == "#!/bin/sh\necho hi\n" and mode(single) == 0o755, (out, body))

        into = os.path.join(home, "into")
        os.makedirs(into)
        await d.file("a.txt").export(into, allow_parent_dir_path=True)
        with open(os.path.join(into, "a.txt")) as f:
            body = f.read()
        ok("file export into a directory", body == "alpha", body)

    print("ALL OK", flush=True)


anyio.run(main)
