#!/usr/bin/env bash
# One-command set-up on a fresh Debian 12 machine, as root: installs what is missing, builds the
# release binaries, installs them with the default /etc/dagger/engine.toml, starts the engine on
# the embedded default (unix:///run/dagger/engine.sock, state in /var/lib/dagger), and runs a
# real pipeline with the official Python SDK: `dagger run python ci.py` in examples/.
#
# The pipeline's base image comes from a registry this script starts on 127.0.0.1 (Debian's
# docker-registry), holding a busybox image built here offline: nothing leaves the machine.
#   --docker-hub             use docker.io/library/busybox:1.36 instead (needs internet access)
#   DAGGER_EXAMPLE_IMAGE=REF use any other image reference
#   DAGGER_EXAMPLE_REGISTRY  address of the local registry (default 127.0.0.1:5999)
set -euo pipefail

image=${DAGGER_EXAMPLE_IMAGE:-}
registry=
for arg in "$@"; do
  case $arg in
    --docker-hub) image=docker.io/library/busybox:1.36 ;;
    *) echo "setup: unknown argument $arg (see the header of $0)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh
cargo build --release --locked -p dagger-engine -p dagger-cli

install -m 0755 target/release/dagger-engine target/release/dagger /usr/local/bin/
if [[ ! -e /etc/dagger/engine.toml ]]; then
  install -D -m 0644 engine.toml /etc/dagger/engine.toml
fi

# Replace an engine started by an earlier run, so the binaries just built are the ones serving.
if [[ -f /run/dagger/engine.pid ]]; then
  pid=$(cat /run/dagger/engine.pid)
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dagger-engine ]]; then
    echo "setup: stopping the engine started earlier (pid $pid)"
    kill -TERM "$pid"
    # Until the process is gone: it holds the state directory's lock after its socket closes
    # (running requests get a grace period), and a new engine cannot start before that.
    for _ in $(seq 1 600); do [[ -e /proc/$pid ]] || break; sleep 0.05; done
    if [[ -e /proc/$pid ]]; then
      echo "setup: the engine (pid $pid) did not stop within 30 s" >&2
      exit 1
    fi
  fi
fi

unset _EXPERIMENTAL_DAGGER_RUNNER_HOST
dagger version
echo '{ version defaultPlatform }' | dagger query

# The example registry and its image, unless the user chose another image.
if [[ -z $image ]]; then
  registry=${DAGGER_EXAMPLE_REGISTRY:-127.0.0.1:5999}
  if ! curl -fs -o /dev/null "http://$registry/v2/"; then
    echo "setup: starting a registry on $registry (storage /var/lib/dagger-example-registry)"
    install -d /etc/dagger /var/lib/dagger-example-registry /var/log/dagger /run/dagger
    cat >/etc/dagger/example-registry.yml <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/dagger-example-registry
  delete:
    enabled: true
http:
  addr: $registry
YAML
    setsid docker-registry serve /etc/dagger/example-registry.yml \
      >>/var/log/dagger/example-registry.log 2>&1 </dev/null &
    echo $! >/run/dagger/example-registry.pid
    for _ in $(seq 1 100); do
      curl -fs -o /dev/null "http://$registry/v2/" && break
      sleep 0.1
    done
    curl -fs -o /dev/null "http://$registry/v2/" || {
      echo "setup: the registry did not start; see /var/log/dagger/example-registry.log" >&2
      exit 1
    }
  fi
  image=$registry/example/busybox:latest
  echo "setup: building the example image offline and pushing it to $image"
  tests/scripts/build-images.sh /var/cache/dagger-example >/dev/null 2>&1 || {
    echo "setup: building the example image failed; run tests/scripts/build-images.sh /var/cache/dagger-example to see why" >&2
    exit 1
  }
  skopeo copy -q --dest-tls-verify=false \
    oci:/var/cache/dagger-example/oci:busybox "docker://$image"
fi

# The official Python SDK, pinned where the tests pin it.
venv=.venv
if [[ ! -x $venv/bin/python ]] || ! cmp -s tests/sdk/requirements.txt "$venv/.requirements"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/sdk/requirements.txt
  cp tests/sdk/requirements.txt "$venv/.requirements"
fi

echo "setup: dagger run python ci.py (base image $image)"
cd examples
CI_IMAGE=$image CI_PUBLISH=${registry:-} dagger run ../$venv/bin/python ci.py
echo "setup: the exported artifact:"
cat build/SHA256SUMS
