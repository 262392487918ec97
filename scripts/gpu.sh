#!/usr/bin/env bash
# The GPU job: on a machine with an NVIDIA GPU and its driver, runs the CUDA kernel tests
# (which skip themselves elsewhere) and the CUDA-versus-tract benchmark table.
#   scripts/gpu.sh            tests, then the full bench
#   scripts/gpu.sh --quick    tests, then a short bench
# NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc-cu12; no CUDA toolkit is needed. The
# kernels are compiled to device code (CUBIN) for the GPU found, so any 12.x driver loads them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! nvidia-smi -L; then
  echo "scripts/gpu.sh: no NVIDIA GPU or driver here (nvidia-smi failed); the GPU tests would only skip" >&2
  exit 1
fi
venv=target/nvrtc-venv
if ! "$venv/bin/python" -c "import nvidia.cuda_nvrtc" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc-cu12==12.9.86"
fi
nvrtc_lib="$("$venv/bin/python" -c 'import nvidia.cuda_nvrtc as m; print(list(m.__path__)[0] + "/lib")')"
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== CUDA tests"
cargo test --locked -p streamscore-infer --test gpu --test cuda
echo "== CUDA against tract"
cargo bench --locked -p streamscore-infer --bench backends -- --bench "$@"
