#!/usr/bin/env bash
# Sets up and runs the main job on a fresh machine:
#   builds streamscore (release), brings up the local stack (tansu broker with sqlite storage,
#   installed once; topics; the built-in schema registry; the schemas), then produces Avro
#   requests and reads them back with their schema ids.
# The stack keeps running afterwards; `target/release/streamscore stack down` stops it.
# Ports: BROKER_PORT (default 9092) and REGISTRY_PORT (default 8081).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin streamscore
bin=target/release/streamscore

"$bin" stack up --broker-port "${BROKER_PORT:-9092}" --registry-port "${REGISTRY_PORT:-8081}"
set -a
# shellcheck disable=SC1091
. .streamscore/stack.env
set +a

"$bin" demo --count "${COUNT:-6}"
echo
echo "The stack is still up (broker $STREAMSCORE_BOOTSTRAP, registry $STREAMSCORE_REGISTRY_URL)."
echo "Try: curl -s $STREAMSCORE_REGISTRY_URL/subjects   Stop it: $bin stack down"
