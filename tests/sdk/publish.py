"""Container.publish with the real Python SDK (run by tests/tests/publish.rs).

SDK_TEST_IMAGE is a busybox image on a plain-HTTP registry on 127.0.0.1; the program publishes
to new repositories of the same registry and reads the results back. Prints one `ok: <check>`
line per check and `ALL OK` at the end; any failure raises.
"""

import os
import sys

import anyio
import dagger
from dagger import dag

IMAGE = os.environ["SDK_TEST_IMAGE"]
REGISTRY = IMAGE.split("/")[0]


def ok(name: str, cond: bool, detail: object) -> None:
    if not cond:
        raise AssertionError(f"{name}: {detail!r}")
    print(f"ok: {name}", flush=True)


async def main() -> None:
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        ctr = (
            dag.container()
            .from_(IMAGE)
            .with_new_file("/published.txt", "from the python sdk")
            .with_env_variable("SDK", "python")
        )
        address = f"{REGISTRY}/sdk/python-published:v1"
        ref = await ctr.publish(address)
        ok("publish returns address@digest", ref.startswith(address + "@sha256:"), ref)

        back = dag.container().from_(ref)
        contents = await back.file("/published.txt").contents()
        ok("published file reads back", contents == "from the python sdk", contents)
        ok("published env reads back", await back.env_variable("SDK") == "python", "SDK")

        arm = dag.container(platform=dagger.Platform("linux/arm64")).with_new_file(
            "/which", "arm64"
        )
        amd = dag.container(platform=dagger.Platform("linux/amd64")).from_(IMAGE).with_new_file(
            "/which", "amd64"
        )
        multi = await dag.container().publish(
            f"{REGISTRY}/sdk/python-multi:v1",
            platform_variants=[amd, arm],
            media_types=dagger.ImageMediaTypes.DockerMediaTypes,
            forced_compression=dagger.ImageLayerCompression.Zstd,
        )
        ok("multi-platform publish", "@sha256:" in multi, multi)
        which = await dag.container(platform=dagger.Platform("linux/arm64")).from_(multi).file("/which").contents()
        ok("arm64 variant reads back", which == "arm64", which)

        try:
            await dag.container().publish(f"{REGISTRY}/sdk/empty:v1")
        except dagger.QueryError as e:
            ok("publishing nothing fails clearly", "nothing to publish" in str(e), str(e))
        else:
            raise AssertionError("publishing an empty container succeeded")
    print("ALL OK", flush=True)


anyio.run(main)
