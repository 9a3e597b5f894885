#!/usr/bin/env bash
# Solver benchmarks: a fully cached 20-operation pipeline (server time and end to end) and 64
# identical concurrent pipelines vs a single one. Prints figures and ratios to the goals.
# Knobs: BENCH_RUNS (20).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "$(id -u)" -ne 0 ]]; then
    echo "bench/solver.sh must run as root (the engine runs containers)" >&2
    exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cargo build --release -p dagger-engine -p dagger-integration-tests --bins
exec target/release/bench-solver
