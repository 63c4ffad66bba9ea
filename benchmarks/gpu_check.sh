#!/usr/bin/env bash
# The GPU checks of issue 13 as one prepared run for a lent CUDA machine, whose image has
# PyTorch, nvcc and ninja but none of bodyfit's other dependencies and no network.
#
# Here, once (fetches the wheels the device lacks into .whl/, 47 MB, ignored by git):
#     echo /.whl/ >> .git/info/exclude
#     bash benchmarks/gpu_check.sh --download
# On the device (its `run` tool: carry [".whl"], timeout_s 540):
#     bash benchmarks/gpu_check.sh
# It installs the wheels under /tmp/site, runs the CUDA tests (tests/test_gpu.py, the nvdiffrast
# backend against the CPU one), then bench_speed.py on CUDA for SMPL (a synthetic SMPL-format
# file) and Anny at batches 256, 1024, 4096 (default schedule, perturbed start, steps replayed as
# CUDA graphs): fits/s and PA-MPJPE side by side; at the largest batch the same without graphs
# (cuda_graphs=false), and SMPL with compile=true. Logs go to $OUT (or
# ./gpu_check_out). GPU_CHECK_DEVICE=cpu and GPU_CHECK_BATCHES="4" try its steps on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(anny==0.6.2 roma==1.8.0 smplx==0.1.28 hydra-core==1.3.8 omegaconf==2.3.1 trimesh==5.2.0
        diffrp-nvdiffrast==0.3.3.1)
if [ "${1:-}" = "--download" ]; then  # all pure Python; hydra's antlr4 runtime comes as a source only
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}" && python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
  exit $?
fi
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
device="${GPU_CHECK_DEVICE:-cuda}"
batches=(${GPU_CHECK_BATCHES:-256 1024 4096})
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing .whl/ failed: run 'bash benchmarks/gpu_check.sh --download' here first"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 ANNY_CACHE_DIR="${ANNY_CACHE_DIR:-/tmp/anny_cache}"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/env.txt"
rc=0
# conftest's options need none of the dev extras; -p no:cacheprovider keeps the tree clean
timeout 120 python3 -m pytest -q -ra -p no:cacheprovider tests/test_gpu.py tests/test_renderers_backends.py \
  2>&1 | tee "$out/tests.txt" || rc=1
timeout 200 python3 benchmarks/bench_speed.py --device "$device" --models smpl anny --batches "${batches[@]}" \
  --n "${batches[-1]}" 2>&1 | tee "$out/bench_speed.txt" || rc=1
timeout 100 python3 benchmarks/bench_speed.py --device "$device" --models smpl anny --batches "${batches[-1]}" \
  --n "${batches[-1]}" cuda_graphs=false 2>&1 | tee "$out/bench_speed_eager.txt" || rc=1
timeout 90 python3 benchmarks/bench_speed.py --device "$device" --models smpl --batches "${batches[-1]}" \
  --n "${batches[-1]}" compile=true 2>&1 | tee "$out/bench_speed_compiled.txt" || rc=1
exit $rc
