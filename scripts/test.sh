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

echo "== Python packages: Confluent's client and NVIDIA's Triton client (interoperability tests), NVRTC (CUDA kernel compile test), pyarrow (replay's Parquet files), PyYAML (deployment files), scikit-learn (quality figures), onnxruntime and numpy (the explanations' reference), PyJWT and cryptography (the edge tests' tokens, JWKS and test CA)"
venv=target/interop-venv
if ! "$venv/bin/python" -c "import confluent_kafka.schema_registry.avro, nvidia.cuda_nvrtc, tritonclient.http, pyarrow.parquet, yaml, sklearn, onnxruntime, numpy, jwt, cryptography" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "confluent-kafka[avro,schemaregistry]==2.16.1" "nvidia-cuda-nvrtc-cu12==12.9.86" "tritonclient[http]==2.73.0" \
    "pyarrow==26.0.1" "pyyaml==6.0.3" "scikit-learn==1.9.1" "onnxruntime==1.32.0" "numpy==2.4.6" \
    "pyjwt==2.15.1" "cryptography==51.0.1"
fi

echo "== Prometheus and promtool (Debian's prometheus package: the metrics and dashboard tests)"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # --no-install-recommends: no node exporter; the package's service is not needed (tests start their own).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version 2>&1 | head -1
export STREAMSCORE_PYTHON="$PWD/$venv/bin/python"
nvrtc_lib="$("$venv/bin/python" -c 'import nvidia.cuda_nvrtc as m; print(list(m.__path__)[0] + "/lib")')"
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== local stack for the tests"
target/debug/streamscore stack up --data-dir "$data" --broker-port 0 --registry-port 0
set -a
# shellcheck disable=SC1091
. "$data/stack.env"
set +a

echo "== tests (broker $STREAMSCORE_BOOTSTRAP, registry $(printf %s "$STREAMSCORE_REGISTRY_URL" | sed 's#//[^@/]*@#//***@#'))"
log="$data/test.log"
status=0
cargo test --workspace --all-targets --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
read -r passed failed ignored < <(awk '/^test result:/ {
  for (i = 1; i < NF; i++) {
    if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i
  }
} END { print p + 0, f + 0, g + 0 }' "$log")
echo
grep '^fuzz ' "$log" || true
echo "tests: $passed passed, $failed failed, $ignored skipped (the GPU tests skip themselves without a GPU)"
exit "$status"
