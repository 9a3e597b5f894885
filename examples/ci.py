"""An example CI pipeline with the official Python SDK (dagger-io), run by `scripts/setup.sh`:

    dagger run python ci.py

It tests the shell "application" in ./app inside a container, with the sources uploaded from
this machine and a secret that never shows up in a log, exports a release artifact to ./build
and, when CI_PUBLISH names a registry, publishes the application image there. Every step is cached by content: run it
twice and the second run only re-checks what changed. CI_IMAGE chooses the base image (setup.sh
points it at a registry it starts on 127.0.0.1).
"""

import os
import sys

import anyio
import dagger
from dagger import dag

IMAGE = os.environ.get("CI_IMAGE", "docker.io/library/busybox:1.36")


async def main() -> None:
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        src = dag.host().directory("app", exclude=["*.tmp"])
        token = dag.set_secret("deploy-token", os.environ.get("DEPLOY_TOKEN", "s3cr3t-example"))

        ctr = (
            dag.container()
            .from_(IMAGE)
            .with_directory("/src", src)
            .with_workdir("/src")
            .with_secret_variable("DEPLOY_TOKEN", token)
        )

        print(await ctr.with_exec(["./test.sh"]).stdout(), end="")

        # The secret is usable inside the container; the SDK and the engine never print it.
        length = await ctr.with_exec(["sh", "-c", 'printf %s "$DEPLOY_TOKEN" | wc -c']).stdout()
        print(f"deploy token length: {length.strip()}")

        greeting = await ctr.with_exec(["./greet.sh", "Dagger"]).stdout()
        print(f"app says: {greeting.strip()}")

        # A release artifact, exported to this machine (./build, relative to where
        # `dagger run` started).
        release = "mkdir -p /dist && tar -cf /dist/app.tar greet.sh && cd /dist && sha256sum app.tar >SHA256SUMS"
        dist = ctr.with_exec(["sh", "-c", release]).directory("/dist")
        print(f"exported {await dist.export('build', wipe=True)}")

        # The application image, published when a registry is given, then run from there.
        registry = os.environ.get("CI_PUBLISH")
        if registry:
            app = (
                dag.container()
                .from_(IMAGE)
                .with_directory("/app", src)
                .with_entrypoint(["/app/greet.sh"])
            )
            ref = await app.publish(f"{registry}/example/greeter:latest")
            print(f"published {ref}")
            out = await dag.container().from_(ref).with_exec(["/app/greet.sh", "registry"]).stdout()
            print(f"the published image says: {out.strip()}")


anyio.run(main)
