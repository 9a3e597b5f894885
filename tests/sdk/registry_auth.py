"""Container.with_registry_auth with the real Python SDK (run by tests/tests/registry_auth.rs).

SDK_TEST_IMAGE is a busybox image on a plain-HTTP registry on 127.0.0.1 that wants htpasswd
credentials (the test registry's fixed account, testuser); the engine has no credentials of its
own. Prints one `ok: <check>` line per check and `ALL OK` at the end; any failure raises.
"""

import os
import sys

import anyio
import dagger
from dagger import dag

IMAGE = os.environ["SDK_TEST_IMAGE"]
REGISTRY = IMAGE.split("/")[0]
USER = "testuser"


def ok(name: str, cond: bool, detail: object) -> None:
    if not cond:
        raise AssertionError(f"{name}: {detail!r}")
    print(f"ok: {name}", flush=True)


async def refused(coro) -> str:
    try:
        await coro
    except dagger.QueryError as e:
        return str(e)
    raise AssertionError("succeeded without credentials")


async def main() -> None:
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        password = dag.set_secret("registry-password", "test" + "pass")

        msg = await refused(dag.container().from_(IMAGE).file("/bin/busybox").size())
        ok("anonymous from is refused", "authentication" in msg, msg)

        # Order matters: the credentials must be in effect where `from` pulls.
        ctr = (
            dag.container()
            .with_registry_auth(REGISTRY, USER, password)
            .from_(IMAGE)
            .with_new_file("/auth.txt", "published with auth")
        )
        size = await ctr.file("/bin/busybox").size()
        ok("from with registry auth", size > 0, size)

        address = f"{REGISTRY}/sdk/auth-published:v1"
        ref = await ctr.publish(address)
        ok("publish with registry auth", ref.startswith(address + "@sha256:"), ref)

        back = (
            dag.container()
            .with_registry_auth(address, USER, password)
            .from_(address)
            .file("/auth.txt")
        )
        contents = await back.contents()
        ok("published image reads back with auth", contents == "published with auth", contents)

        msg = await refused(dag.container().from_(address).file("/auth.txt").contents())
        ok("anonymous read of the published tag is refused", "authentication" in msg, msg)

        msg = await refused(
            dag.container()
            .with_registry_auth(REGISTRY, USER, password)
            .without_registry_auth(REGISTRY)
            .from_(address)
            .file("/auth.txt")
            .contents()
        )
        ok("without_registry_auth removes it", "authentication" in msg, msg)
    print("ALL OK", flush=True)


anyio.run(main)
