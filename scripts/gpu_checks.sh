#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run (for a lent GPU machine with the project
# installed). Writes logs and JSON under $OUT (default: ./gpu_checks). Usage:
#   bash scripts/gpu_checks.sh [path/to/cifar10-jpeg.tar.gz]
# 1. the GPU tests (metrics on CUDA tensors, augmentation on CUDA, CUDA-graph replay);
# 2. the metrics suite at N = 50,000 on the GPU (docs/metrics.md);
# 3. training throughput against the reference loop, incl. the CUDA-graph variant, and one full
#    evaluation against one epoch (docs/benchmarks.md).
set -euo pipefail
out=${OUT:-gpu_checks}
archive=${1:-../shared/data/cifar10-jpeg.tar.gz}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/device.txt"
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest_gpu.log"
python scripts/bench_metrics.py --device cuda --sizes 50000 --ks 10 100 --ref-max-n 0 \
    --json "$out/bench_metrics_cuda.json" 2>&1 | tee "$out/bench_metrics_cuda.log"
python scripts/bench_train.py --archive "$archive" --eval --steps 15 \
    --json "$out/bench_train.json" 2>&1 | tee "$out/bench_train.log"
