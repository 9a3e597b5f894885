"""A small pipeline for tests/tests/progress.rs: its stdout must stay exactly the program's own
while `dagger run --progress=plain` reports the engine's work on stderr."""

import os

import anyio
import dagger
from dagger import dag


async def main() -> None:
    async with dagger.connection(dagger.Config()):
        out = await (
            dag.container()
            .from_(os.environ["SDK_TEST_IMAGE"])
            .with_exec(["sh", "-c", "echo progress from python"])
            .stdout()
        )
    print(f"result: {out.strip()}", flush=True)


anyio.run(main)
