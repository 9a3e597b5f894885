#!/usr/bin/env bash
# One-command set-up on a fresh Debian 12 machine, as root: installs what is missing, builds the
# release binaries, installs them with the default /etc/dagger/engine.toml, starts the engine on
# the embedded default (unix:///run/dagger/engine.sock, state in /var/lib/dagger) and runs a
# real query through it.
set -euo pipefail
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
    for _ in $(seq 1 200); do [[ -e /run/dagger/engine.sock ]] || break; sleep 0.05; done
  fi
fi

unset _EXPERIMENTAL_DAGGER_RUNNER_HOST
dagger version
echo '{ version defaultPlatform }' | dagger query
