#!/usr/bin/env bash
# The whole test suite, as root on Debian 12: installs what the tests need (Debian packages and
# the pinned SDKs in tests/sdk/), checks formatting and lints, builds, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $(id -u) != 0 ]]; then
  echo "test.sh: the end-to-end tests start the real engine, which needs root" >&2
  exit 1
fi

scripts/install-deps.sh

# The real Python SDK, pinned in tests/sdk/requirements.txt.
venv=.test-venv
if [[ ! -x $venv/bin/python ]] || ! cmp -s tests/sdk/requirements.txt "$venv/.requirements"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/sdk/requirements.txt
  cp tests/sdk/requirements.txt "$venv/.requirements"
fi

# The real TypeScript SDK, pinned in tests/sdk/package.json and package-lock.json. No install
# scripts: the SDK is plain JavaScript, and none of its dependencies needs one to work.
node_major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')
if [[ -z $node_major || $node_major -lt 20 ]] || ! command -v npm >/dev/null; then
  echo "test.sh: the TypeScript SDK tests need Node.js 20 or newer with npm (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
modules=tests/sdk/node_modules
if [[ ! -d $modules/@dagger.io/dagger ]] || ! cat tests/sdk/package.json tests/sdk/package-lock.json | cmp -s - "$modules/.installed-pins"; then
  rm -rf "$modules"
  (cd tests/sdk && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  cat tests/sdk/package.json tests/sdk/package-lock.json > "$modules/.installed-pins"
fi

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-fail-fast
