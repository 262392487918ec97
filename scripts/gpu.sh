#!/usr/bin/env bash
# The GPU job: on a machine with an NVIDIA GPU and its driver, runs the CUDA kernel tests
# (which skip themselves elsewhere), the CUDA-versus-tract benchmark table and µs per
# explanation on each backend.
#   scripts/gpu.sh                 build here, run the tests, then the full bench
#   scripts/gpu.sh --quick         the same with a short bench
#   scripts/gpu.sh --package DIR   build the test and bench binaries here (no GPU needed) and
#                                  pack them with NVRTC into DIR/gpu-job.tar.xz
#   scripts/gpu.sh --prebuilt DIR [--quick]
#                                  on a GPU machine with no Rust toolchain or network: unpack
#                                  DIR/gpu-job.tar.xz and run the tests and the bench from it
# NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc-cu12; no CUDA toolkit is needed. The
# kernels are compiled to device code (CUBIN) for the GPU found, so any 12.x driver loads them.
set -euo pipefail
cd "$(dirname "$0")/.."

nvrtc_venv=target/nvrtc-venv
nvrtc_lib_dir() {
  if ! "$nvrtc_venv/bin/python" -c "import nvidia.cuda_nvrtc" 2>/dev/null; then
    python3 -m venv "$nvrtc_venv"
    "$nvrtc_venv/bin/pip" install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc-cu12==12.9.86"
  fi
  "$nvrtc_venv/bin/python" -c 'import nvidia.cuda_nvrtc as m; print(list(m.__path__)[0] + "/lib")'
}

# The executables a cargo invocation built (its JSON messages on stdin).
executables() {
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}

case "${1:-}" in
--package)
  out="${2:?usage: scripts/gpu.sh --package DIR}"
  mkdir -p "$out"
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/bin" "$stage/nvrtc"
  {
    cargo test --locked -p streamscore-infer --test gpu --test cuda --no-run --message-format=json
    cargo bench --locked -p streamscore-infer --bench backends --no-run --message-format=json
    cargo bench --locked -p streamscore-infer --bench explain --no-run --message-format=json
  } | executables | while read -r name path; do
    cp "$path" "$stage/bin/$name"
    strip "$stage/bin/$name"
  done
  lib="$(nvrtc_lib_dir)"
  cp "$lib"/libnvrtc.so.12 "$lib"/libnvrtc-builtins.so.12.* "$stage/nvrtc/"
  cp -r models "$stage/models"
  git rev-parse HEAD >"$stage/commit"
  tar -C "$stage" -cf - . | xz -T0 -6 >"$out/gpu-job.tar.xz"
  ls -l "$out/gpu-job.tar.xz"
  exit 0
  ;;
--prebuilt)
  package="${2:?usage: scripts/gpu.sh --prebuilt DIR [--quick]}"
  shift 2
  nvidia-smi -L || { echo "scripts/gpu.sh: no NVIDIA GPU or driver here (nvidia-smi failed)" >&2; exit 1; }
  job="$(mktemp -d)"
  xz -dc "$package/gpu-job.tar.xz" | tar -C "$job" -xf -
  echo "binaries built from commit $(cat "$job/commit")"
  export LD_LIBRARY_PATH="$job/nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export STREAMSCORE_MODELS_DIR="$job/models"
  status=0
  echo "== CUDA tests"
  "$job/bin/gpu" || status=$?
  "$job/bin/cuda" || status=$?
  echo "== CUDA against tract"
  "$job/bin/backends" --bench "$@" || status=$?
  echo "== explanations: CUDA against tract"
  "$job/bin/explain" --bench "$@" || status=$?
  exit "$status"
  ;;
esac

if ! nvidia-smi -L; then
  echo "scripts/gpu.sh: no NVIDIA GPU or driver here (nvidia-smi failed); the GPU tests would only skip" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$(nvrtc_lib_dir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== CUDA tests"
cargo test --locked -p streamscore-infer --test gpu --test cuda
echo "== CUDA against tract"
cargo bench --locked -p streamscore-infer --bench backends -- --bench "$@"
echo "== explanations: CUDA against tract"
cargo bench --locked -p streamscore-infer --bench explain -- --bench "$@"
