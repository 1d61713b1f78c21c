#!/usr/bin/env bash
# One prepared GPU check (issue 12): run it whenever a GPU is lent, and copy the tables
# into benchmarks/RESULTS.md with the machine and commit it prints.
#
# Records, in one run of at most 9 minutes on one GPU:
#   1. loss speed and peak memory against the reference implementation of Zhang et al.
#      at batch 2048 and 4096 (benchmarks/speed/loss_speed.py; the reference is loaded at run
#      time from a local clone given with --reference-repo, never part of this repo),
#      every default (G-HMLC also after its first fit), HMCE with a memory bank of 4096
#      rows, the defaults without value checks (what the checks' syncs cost on a GPU) and
#      compiled with torch.compile;
#   2. training-step throughput of every method with ResNet-50 (CIFAR stem, 32 px) at
#      batch 512 in bf16 (benchmarks/speed/throughput.py's CLI);
#   3. the peak GPU memory of one training step of every method, each method alone
#      (throughput.py's StepRunner, torch.cuda.max_memory_allocated);
#   4. a short Shapes run of A-HMLC over the backbone's tokens (a-hmlc-tokens) beside
#      HMCE with the same margin: training, probes and the identification score on a GPU.
# Every step has its own time limit, so a slow step cannot take the whole budget; a step
# that fails or times out is reported and the others still run.
#
# Usage:
#   benchmarks/speed/gpu_check.sh --reference-repo /path/to/hierarchicalContrastiveLearning
#   benchmarks/speed/gpu_check.sh --dry-run        # CPU, tiny sizes, seconds: checks the script
# Options:
#   --out DIR     where the tables and JSON go (default: $OUT if set, else runs/gpu_check)
#   --python PY   the interpreter (default: $PYTHON, else python)
set -uo pipefail

DRY_RUN=0
REFERENCE=""
OUT_DIR="${OUT:-runs/gpu_check}"
PY="${PYTHON:-python}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --reference-repo) REFERENCE="$2"; shift ;;
        --out) OUT_DIR="$2"; shift ;;
        --python) PY="$2"; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"

if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu; LOSS_BATCHES=16,32; REPEATS=1; MEMORY=64; PRECISION=bf16
    BACKBONE=resnet_tiny_cifar; STEP_BATCH=4; WARMUP=1; STEPS=1; ROUNDS=1
    LIMIT_LOSS=300; LIMIT_STEP=300; LIMIT_PEAK=300; LIMIT_TOKENS=600  # a shared CPU
    TOKEN_ARGS=(--epochs 1 --train-samples 64 --test-samples 64 --batch-size 32 --probe-epochs 1)
    LOSS_EXTRA=(--no-peak-memory)  # the CPU's profiler replay is slow; the GPU's is free
else
    LOSS_EXTRA=()
    DEVICE=cuda; LOSS_BATCHES=2048,4096; REPEATS=10; MEMORY=4096; PRECISION=bf16
    BACKBONE=resnet50_cifar; STEP_BATCH=512; WARMUP=2; STEPS=3; ROUNDS=3
    # 150 + 180 + 120 + 60 s = 8.5 min at most, leaving time for start-up.
    LIMIT_LOSS=150; LIMIT_STEP=180; LIMIT_PEAK=120; LIMIT_TOKENS=60
    TOKEN_ARGS=(--epochs 2 --train-samples 4096 --test-samples 2000 --batch-size 256
        --accelerator gpu --precision bf16-mixed)
    if [[ -z "$REFERENCE" ]]; then
        echo "gpu_check.sh: pass --reference-repo /path/to/hierarchicalContrastiveLearning" >&2
        exit 2
    fi
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA device; use --dry-run on the CPU" >&2
        exit 2
    fi
fi
if [[ -n "$REFERENCE" && ! -f "$REFERENCE/losses/losses.py" ]]; then
    echo "gpu_check.sh: no losses/losses.py under $REFERENCE" >&2
    exit 2
fi
METHODS="$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks/suite"); import methods; print(",".join(methods.method_names()))')" || exit 2

FAILED=()
run_step() {  # run_step NAME LIMIT COMMAND...: output to $OUT_DIR/NAME.md and the console
    local name="$1" limit="$2"
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local begin=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.md"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - begin)) s"
    [[ $status == 0 ]] || FAILED+=("$name (exit $status)")
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "dry run: $DRY_RUN"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} | tee "$OUT_DIR/environment.txt"

REFERENCE_ARGS=()
[[ -n "$REFERENCE" ]] && REFERENCE_ARGS=(--reference-repo "$REFERENCE" --reference-max-batch 4096)
run_step loss_speed "$LIMIT_LOSS" "$PY" benchmarks/speed/loss_speed.py --device "$DEVICE" \
    --batch-sizes "$LOSS_BATCHES" --repeats "$REPEATS" --groups defaults,core,memory,unchecked,compiled \
    --memory "$MEMORY" "${REFERENCE_ARGS[@]}" "${LOSS_EXTRA[@]}" \
    --output "$OUT_DIR/loss_speed.json"

run_step throughput "$LIMIT_STEP" "$PY" benchmarks/speed/throughput.py --methods "$METHODS" \
    --backbone "$BACKBONE" --batch-size "$STEP_BATCH" --precision "$PRECISION" \
    --device "$DEVICE" --warmup "$WARMUP" --steps "$STEPS" --rounds "$ROUNDS"

run_step peak_memory "$LIMIT_PEAK" "$PY" - "$METHODS" "$BACKBONE" "$STEP_BATCH" \
    "$PRECISION" "$DEVICE" <<'PYTHON'
"""Peak memory of one training step per method, each method alone on the device."""
import gc
import sys

sys.path.insert(0, "benchmarks/speed")
import torch  # noqa: E402
import throughput  # noqa: E402

names, backbone, batch, precision, device = sys.argv[1:6]
args = throughput.build_parser().parse_args(
    ["--backbone", backbone, "--batch-size", batch, "--precision", precision,
     "--device", device, "--warmup", "1"]
)
cuda = device.startswith("cuda")
print(f"backbone {backbone}, batch {batch}, precision {precision}, {device}\n")
print("| method | peak allocated GiB | peak reserved GiB |")
print("|---|---:|---:|")
for name in names.split(","):
    runner = throughput.StepRunner(name, args, torch.device(device))
    runner.step()  # warm-up: lazy state (optimizer buffers, GMM tables) is allocated
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    runner.step()
    if cuda:
        torch.cuda.synchronize()
        allocated = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
        print(f"| {name} | {allocated:.2f} | {reserved:.2f} |", flush=True)
    else:
        print(f"| {name} | n/a (CPU) | n/a (CPU) |", flush=True)
    del runner
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
PYTHON

run_step token_run "$LIMIT_TOKENS" "$PY" benchmarks/main.py --dataset shapes \
    --methods a-hmlc-tokens,hmce-m2=hmce:hierarchy_margin=0.2 \
    --no-plots --no-progress-bar --overwrite --output-dir "$OUT_DIR/token_run" "${TOKEN_ARGS[@]}"

echo
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "gpu_check.sh: FAILED steps: ${FAILED[*]}; outputs in $OUT_DIR"
    exit 1
fi
echo "gpu_check.sh: all steps done in ${SECONDS} s; outputs in $OUT_DIR"
