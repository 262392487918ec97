#!/usr/bin/env bash
# Sets up and runs the main job on a fresh machine:
#   builds streamscore (release), brings up the local stack (tansu broker with sqlite storage,
#   installed once; topics; the built-in schema registry; the schemas), then runs the fused
#   pipeline (ingest + infer on the shipped models) fed by the load generator, with a live
#   view of events/s in and out, dead letters and p50/p99 latency, and a summary at the end.
# Arguments go to `streamscore run` (default: --duration-secs 60; Ctrl-C stops earlier).
# The stack keeps running afterwards; `target/release/streamscore stack down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin streamscore
if [ "$#" -eq 0 ]; then
  set -- --duration-secs 60
fi
exec target/release/streamscore run "$@"
