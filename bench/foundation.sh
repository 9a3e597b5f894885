#!/usr/bin/env bash
# Benchmarks the engine foundation: cold start, idle RSS and { version } throughput of the
# release dagger-engine. See bench/README.md. Knobs (environment): BENCH_RUNS,
# BENCH_CONCURRENCY, BENCH_SECONDS, BENCH_STATE_PARENT.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "$(id -u)" -ne 0 ]]; then
    echo "bench/foundation.sh must run as root: dagger-engine refuses to start otherwise (it mounts filesystems). Try: sudo $0" >&2
    exit 1
fi

cargo build --release -p dagger-engine -p dagger-integration-tests --bins
exec target/release/bench-foundation target/release/dagger-engine
