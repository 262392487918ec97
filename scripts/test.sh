#!/usr/bin/env bash
# Sets up and runs the whole test suite on a fresh machine:
#   installs tansu 0.6.0 once (reused after), builds the workspace (dev profile),
#   starts a private local stack (tansu + registry) on free ports in a temporary directory,
#   runs every test against it, and stops the stack.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test registry).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (dev profile)"
cargo build --workspace --all-targets --locked

data="$(mktemp -d -t streamscore-test.XXXXXX)"
cleanup() {
  target/debug/streamscore stack down --data-dir "$data" || true
  rm -rf "$data"
}
trap cleanup EXIT

echo "== local stack for the tests"
target/debug/streamscore stack up --data-dir "$data" --broker-port 0 --registry-port 0
set -a
# shellcheck disable=SC1091
. "$data/stack.env"
set +a

echo "== tests (broker $STREAMSCORE_BOOTSTRAP, registry $STREAMSCORE_REGISTRY_URL)"
cargo test --workspace --locked "$@"
