#!/usr/bin/env bash
# On a GPU machine (no network): build both native modules in place for sm_90,
# run the CUDA tests, then benchmarks/gpu_check.py. Logs and tables go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
start=$SECONDS
if ! { cmake -S . -B build/gpu -G Ninja -DSEPFL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
         -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" && cmake --build build/gpu; } \
       >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
echo "build: $((SECONDS - start)) s"
python3 -c "import sepfl; assert sepfl.has_cuda(), 'CUDA module not usable'; print('has_cuda OK')" || exit 1
python3 -m pytest tests -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.log" | tail -15
echo "tests done: $((SECONDS - start)) s"
python3 benchmarks/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log" | grep -v "^\s*$" | tail -60
echo "total: $((SECONDS - start)) s"
