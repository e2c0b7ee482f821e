#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared command for a lent GPU machine, where torch is
# installed and no package registry can be reached. Stages, each under its own `timeout` so that
# the whole ends within --budget seconds (default 540: under 9 minutes), each one's log kept:
#   install       lightly, Hydra, omegaconf, antlr4, submitit and the submitit launcher from the
#                 wheels carried in .whl/ (pip install --no-index --no-deps --target, then
#                 PYTHONPATH), this package from src/ (PYTHONPATH); skipped when they import
#   data          the CIFAR-10 JPEG archive extracted once (kept for a rerun); in the background,
#                 while the GPU tests run
#   gpu-tests     pytest -m gpu (metrics on CUDA tensors, views and CUDA-graph replay, a CUDA
#                 training run with CUDA graphs and one with trainer.augmentation=auto)
#   bench         scripts/bench_train.py --eval, every variant but torch.compile: reference fp32,
#                 reference bf16 + channels_last, ours batched (bf16, channels_last), ours with
#                 lightly's PIL workers, ours + CUDA graphs, auto's choice; then one full
#                 evaluation against one training epoch
#   cifar10_gpu   labelfree-reproduce experiment=cifar10_gpu (3 runs at once on the GPU, then the
#                 analysis), given the time it was sized for (--window, 330 s: the stages before
#                 it are cut short to leave it that); if it runs out of time, the analysis of
#                 what it left (train=false)
#   bench-compile scripts/bench_train.py, ours + torch.compile (last: its compile time varies most)
#   bench-metrics scripts/bench_metrics.py at N = 50,000 on the GPU (docs/metrics.md)
#   pack          into the output folder: summary.md (stages with status and seconds, the
#                 throughput table, the runs, the main table), bench_train.json (both benchmark
#                 stages merged), records.tar.gz (every run's run.json, metrics.jsonl, metrics.csv,
#                 train.log, .hydra/; the analysis; bench_metrics.json; no checkpoints) and
#                 logs.tar.gz (every stage's log, the device, the jobs' stdout/stderr)
# A stage that runs out of time is stopped with SIGINT (runs mark themselves interrupted and keep
# their records; SIGKILL 20 s later) and the next stages still run; the script's exit status is
# 0 whatever the stages did (summary.md says), 1 only if nothing could be packed.
#
# Usage:
#   bash scripts/gpu_checks.sh [--dry-run] [--budget S] [--window S] [--archive PATH] [OUT_DIR]
#   (--budget: 540 s, 1200 s with --dry-run; --window: 330 s, 480 s with --dry-run)
#   bash scripts/gpu_checks.sh --prepare-wheels    # where PyPI is reachable: fills .whl/
# The output folder is $OUT if set, else OUT_DIR, else ./gpu_checks. The archive defaults to
# ../shared/data/cifar10-jpeg.tar.gz, else .devdata/cifar10-jpeg.tar.gz; it is extracted into
# $LABELFREE_GPU_CHECKS_DATA (default ${TMPDIR:-/tmp}/labelfree-gpu-checks-data), kept so that a
# rerun skips it. $PYTHON: the interpreter (default python3).
#
# --dry-run: the same stages on the CPU at toy size, the CI test of this script
# (tests/test_gpu_checks.py): 400 CIFAR-10 JPEGs (30 train + 10 test per class, copied from the
# archive into a small one), a small_cnn of widths 16/32, 2 epochs, metrics=paper, the benchmark
# on 128 images without the CUDA-only variants, and torch.compile switched off
# (TORCH_COMPILE_DISABLE=1: compiling on 2 CPU cores takes minutes), everything in a temporary
# folder that is removed.
#
# Preparing the wheels, once, where PyPI is reachable (docs/benchmarks.md):
#   bash scripts/gpu_checks.sh --prepare-wheels
# runs `pip wheel --no-deps -w .whl` on the packages the GPU image lacks (CARRY below), pinned to
# the versions installed here; all are pure Python (py3-none-any), so the GPU machine's Python
# 3.12 takes them. By hand, the same:
#   python -m pip wheel --no-deps -w .whl lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1 \
#       antlr4-python3-runtime==4.9.3 hydra-submitit-launcher==1.2.0 submitit==1.5.4
# (`pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ...` fetches the
# same where each has a wheel on PyPI; antlr4 4.9.3 has only a source archive, which `pip wheel`
# builds). Everything else the package needs (numpy, scipy, scikit-learn, pandas, matplotlib,
# tqdm, pillow, pyyaml, cloudpickle, pytorch-lightning, pytest) is on the GPU image. .whl/ is
# git-ignored: carry it (and .devdata/ with the archive, since ../shared does not travel).
set -euo pipefail

CARRY=(lightly hydra-core omegaconf antlr4-python3-runtime hydra-submitit-launcher submitit)
py=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

dry_run=false budget="" window="" archive="" out_arg="" prepare=false
while (($#)); do
    case $1 in
        --dry-run) dry_run=true ;;
        --budget) budget=$2; shift ;;
        --window) window=$2; shift ;;
        --archive) archive=$2; shift ;;
        --prepare-wheels) prepare=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        -*) echo "gpu_checks.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out_arg=$1 ;;
    esac
    shift
done

if $prepare; then
    mkdir -p .whl
    pins=()
    for name in "${CARRY[@]}"; do
        pins+=("$name==$("$py" -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    "$py" -m pip wheel -q --no-deps -w .whl "${pins[@]}"
    if find .whl -type f -name '*.whl' ! -name '*-none-any.whl' | grep .; then
        echo "gpu_checks.sh: the wheels above are not pure Python: get them for Python 3.12" >&2
        exit 1
    fi
    ls -l .whl
    exit 0
fi

out=${OUT:-${out_arg:-gpu_checks}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/labelfree-gpu-checks.XXXXXX")
logs=$work/logs
mkdir -p "$logs"
# 540 s on the GPU machine (its commands end at 600 s). A dry run takes ~2 min on 2 idle cores,
# but its limits are generous: on a loaded machine one `import torch` has taken 40 s.
budget=${budget:-$($dry_run && echo 1200 || echo 540)}
window=${window:-$($dry_run && echo 480 || echo 330)}
pack_s=30 # kept for packing
deadline=$((SECONDS + budget))
if [[ -z $archive ]]; then
    archive=../shared/data/cifar10-jpeg.tar.gz
    [[ -f $archive ]] || archive=.devdata/cifar10-jpeg.tar.gz
fi
archive=$(cd "$(dirname "$archive")" 2>/dev/null && pwd)/$(basename "$archive")
if $dry_run; then
    data_dir=$work/data
else
    data_dir=${LABELFREE_GPU_CHECKS_DATA:-${TMPDIR:-/tmp}/labelfree-gpu-checks-data}
fi
data_root=$data_dir/cifar10-jpeg
export PYTHONUNBUFFERED=1 WANDB_MODE=offline

# run_stage NAME LIMIT_S COMMAND...: the command under `timeout`, stopped at LIMIT_S or at $until
# (default: the deadline less the packing time), whichever comes first; its output in
# logs/NAME.log, its row (name, status, seconds) appended to logs/stages.tsv. The signal is
# SIGINT, or $signal (a background job ignores SIGINT).
until=$((deadline - pack_s))
run_stage() {
    local name=$1 limit=$2 start=$SECONDS rc=0
    shift 2
    local left=$((until - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        printf '%s\tskipped: out of time\t0\n' "$name" >>"$logs/stages.tsv"
        echo "== $name: skipped, out of time" | tee -a "$logs/stages.log"
        return 0
    fi
    echo "== $name (limit ${limit} s): $*" | tee -a "$logs/stages.log"
    timeout -s "${signal:-INT}" -k 20 "$limit" "$@" >"$logs/$name.log" 2>&1 || rc=$?
    local status
    case $rc in
        0) status=ok ;;
        124) status="timed out after ${limit} s" ;;
        137) status="timed out after ${limit} s, killed 20 s later" ;;
        *) status="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - start)) >>"$logs/stages.tsv"
    {
        echo "   $name: $status in $((SECONDS - start)) s"
        tail -n 5 "$logs/$name.log"
    } | tee -a "$logs/stages.log"
}

# the carried packages found (not imported: importing lightly imports torch, which can take a
# while on a loaded machine)
find_carried() {
    "$py" -c "import importlib.util, sys
def missing(name):
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:  # its parent package is missing
        return True
names = ['lightly', 'hydra', 'omegaconf', 'antlr4', 'submitit',
         'hydra_plugins.hydra_submitit_launcher']
lacking = [name for name in names if missing(name)]
print('missing:', ', '.join(lacking) if lacking else 'none')
sys.exit(1 if lacking else 0)"
}

install_wheels() {
    if find_carried; then
        echo "nothing to install"
        return 0
    fi
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "no wheels in .whl/: run bash scripts/gpu_checks.sh --prepare-wheels first"
        return 1
    fi
    ls .whl/*.whl
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        .whl/*.whl
    find_carried
}

# The archive extracted into $data_root (a dry run first copies 30 train and 10 test images of
# each class into a small archive). labelfree.data.extract_archive leaves a marker, so the
# experiment's own call (data.archive) and a rerun find it done.
cat >"$work/data.py" <<'EOF'
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

from labelfree.data import extract_archive

archive, dest, small = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
start = time.perf_counter()
if small:  # --dry-run: 30 train + 10 test JPEGs per class, streamed from the archive
    keep, counts = {"train": 30, "test": 10}, Counter()
    with tarfile.open(archive, "r|gz") as src, tarfile.open(small[0], "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and counts[parts[-3], parts[-2]] < keep.get(
                parts[-3], 0
            ):
                counts[parts[-3], parts[-2]] += 1
                dst.addfile(member, src.extractfile(member))
    print(f"{archive} -> {small[0]}: {sum(counts.values())} images, {len(counts)} split x class")
    archive = small[0]
folder = extract_archive(archive, dest)
n = {s: sum(1 for p in (folder / s).rglob("*") if p.is_file()) for s in ("train", "test")}
print(f"{archive} in {folder}: {n} in {time.perf_counter() - start:.1f} s")
EOF

site=$work/site
export PYTHONPATH=$root/src:$site${PYTHONPATH:+:$PYTHONPATH}
export -f find_carried install_wheels
export py site

if $dry_run; then
    device=cpu
    small_archive=$work/cifar10-small.tar.gz
    data_args=("$small_archive")
    export LABELFREE_CIFAR10_ARCHIVE=$small_archive
    tiny=(--device cpu --arch small_cnn --set "arch.widths=[16,32]" --train-per-class 30
        --test-per-class 10 --images 128 --batch-size 32 --steps 2 --workers 1 --crop-draws 500)
    bench=("${tiny[@]}" --variants "ref-fp32,ours-fp32,ours-lightly,auto" --eval
        --set metrics=paper)
    compile_bench=(env TORCH_COMPILE_DISABLE=1 "$py" scripts/bench_train.py "${tiny[@]}"
        --variants ours-compile)
    threads=(env OMP_NUM_THREADS=1) # the 3 runs at once on 2 cores: no oversubscribed threads
    experiment=(data.train_per_class=30 data.test_per_class=10 arch=small_cnn "arch.widths=[16,32]"
        trainer.epochs=2 trainer.batch_size=64 trainer.num_workers=0 "eval.schedule=[1]"
        metrics=paper metrics.kmeans.n_runs=2 analysis.bootstrap.n_resamples=50
        analysis.figures.enabled=false)
    metrics=(--device cpu --sizes 500 --ks 10 --suites paper --ref-max-n 0)
    limits=(120 240 240 240 180 120) # install data gpu-tests bench bench-compile bench-metrics
else
    device=cuda
    data_args=()
    export LABELFREE_CIFAR10_ARCHIVE=$archive
    bench=(--steps 15 --eval
        --variants "ref-fp32,ref-bf16-cl,ours-bf16-cl,ours-lightly,ours-graphs,auto")
    compile_bench=("$py" scripts/bench_train.py --train-per-class 1024 --test-per-class 10
        --crop-draws 500 --variants ours-compile)
    threads=()
    experiment=()
    metrics=(--device cuda --sizes 50000 --ks 10 100 --ref-max-n 0)
    limits=(60 150 90 120 120 60)
fi
{
    echo "date: $(date -u +%FT%TZ) | host: $(hostname) | cores: $(nproc) | dry run: $dry_run"
    echo "budget: ${budget} s, cifar10_gpu window: ${window} s | archive: $archive"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    else
        echo "no nvidia-smi: no GPU"
    fi
    if $dry_run; then # (no torch import: it can take a while on a loaded machine)
        "$py" -c "import importlib.metadata as m, sys
print('python', sys.version.split()[0], 'torch', m.version('torch'))"
    else
        "$py" -c "import sys, torch
print('python', sys.version.split()[0], 'torch', torch.__version__,
      'cuda', torch.cuda.is_available())"
    fi
} >"$logs/device.txt" 2>&1
cat "$logs/device.txt"

# the stages before the experiment share what its window leaves
until=$((deadline - pack_s - window))
run_stage install "${limits[0]}" bash -c install_wheels
signal=TERM run_stage data "${limits[1]}" \
    "$py" "$work/data.py" "$archive" "$data_root" "${data_args[@]}" &
data_pid=$!
# the test files that hold GPU tests (collecting all of tests/ takes a while)
mapfile -t gpu_tests < <(grep -rlE 'pytest\.mark\.gpu' tests --include='*.py' | sort)
run_stage gpu-tests "${limits[2]}" "$py" -m pytest -m gpu -q -p no:cacheprovider "${gpu_tests[@]}"
wait "$data_pid" || true
run_stage bench "${limits[3]}" "$py" scripts/bench_train.py --root "$data_root" "${bench[@]}" \
    --json "$work/bench_train.json"

sweep=(experiment=cifar10_gpu "paths.output_dir=$work/outputs" "paths.data_dir=$data_dir"
    "output=$work/analysis" "trainer.device=$device" "${experiment[@]}")
until=$((deadline - pack_s - 60)) # 60 s kept for the analysis of an interrupted sweep
run_stage cifar10_gpu "$window" "${threads[@]}" "$py" -m labelfree.reproduce "${sweep[@]}"
until=$((deadline - pack_s))
if [[ ! -f $work/analysis/main_table.md ]] &&
    compgen -G "$work/outputs/sweeps/*/*/metrics.jsonl" >/dev/null; then
    run_stage analysis 60 "$py" -m labelfree.reproduce "${sweep[@]}" train=false
fi
run_stage bench-compile "${limits[4]}" "${compile_bench[@]}" --root "$data_root" \
    --json "$work/bench_compile.json"
run_stage bench-metrics "${limits[5]}" "$py" scripts/bench_metrics.py "${metrics[@]}" \
    --json "$work/bench_metrics.json"

# ---- pack ----
(cd "$work" && find outputs analysis bench_metrics.json -type f 2>/dev/null |
    grep -Ev '/checkpoints/|\.pt$|\.pkl$|\.lock$|/\.restarts/|/\.submitit/' >"$work/records.txt") ||
    true
tar -czf "$out/records.tar.gz" -C "$work" -T "$work/records.txt"
(cd "$work" && find outputs -path '*/.submitit/*' \( -name '*.out' -o -name '*.err' \) \
    -exec cp --parents {} logs/ \;) 2>/dev/null || true
"$py" - "$work" "$out" <<'EOF'
import csv
import json
import sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
lines = ["# gpu_checks.sh", "", (work / "logs" / "device.txt").read_text(), ""]
lines += ["| stage | status | s |", "|---|---|---:|"]
with open(work / "logs" / "stages.tsv") as f:
    lines += [f"| {name} | {status} | {s} |" for name, status, s in csv.reader(f, delimiter="\t")]

# bench_train.json: the bench stage's JSON, with the compile stage's variant merged in
bench = {}
for name in ("bench_train.json", "bench_compile.json"):
    path = work / name
    if path.is_file():
        part = json.loads(path.read_text())
        if not bench:
            bench = part
        else:
            for key in ("images_per_s", "repeats", "images_per_cpu_s", "load"):
                bench.setdefault(key, {}).update(part.get(key, {}))
if bench:
    (out / "bench_train.json").write_text(json.dumps(bench, indent=2))
    lines += ["", f"## Training throughput ({bench['device']}, auto chose {bench['auto_choice']})"]
    lines += ["", "| variant | images/s |", "|---|---:|"]
    lines += [f"| {label} | {rate:,.0f} |" for label, rate in bench["images_per_s"].items()]
    if "eval_s" in bench:
        lines += [
            "",
            f"one training epoch: {bench['epoch_s']:.1f} s, one full evaluation: "
            f"{bench['eval_s']:.1f} s (ratio {bench['eval_s'] / bench['epoch_s']:.2f})",
        ]

runs = sorted(work.glob("outputs/sweeps/*/*/run.json"))
if runs:
    lines += ["", "## cifar10_gpu runs", ""]
    lines += ["| run | status | last epoch | evaluations | wall s | epochs x images / wall s |"]
    lines += ["|---|---|---:|---:|---:|---:|"]
    for path in runs:
        info = json.loads(path.read_text())
        records = path.with_name("metrics.jsonl")
        evals = len(records.read_text().splitlines()) if records.is_file() else 0
        epochs, wall = info.get("last_epoch") or 0, info.get("wall_s")
        per_class = info.get("config", {}).get("data", {}).get("train_per_class") or 5000
        rate = f"{epochs * per_class * 10 / wall:,.0f}" if wall else ""
        lines.append(
            f"| {path.parent.name} | {info.get('status')} | {epochs} | {evals} | {wall} | {rate} |"
        )
table = work / "analysis" / "main_table.md"
if table.is_file():
    lines += ["", table.read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
EOF
cp "$out/summary.md" "$logs/"
tar -czf "$out/logs.tar.gz" -C "$work" logs
rm -rf "$work"
echo "gpu_checks.sh: wrote $(cd "$out" && echo *) into $out"
cat "$out/summary.md"
