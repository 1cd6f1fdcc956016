#!/usr/bin/env bash
# benchmarks/gpu.sh: the GPU figures of CLASP in one run (under 8 minutes on one H100) and one file.
#
#   benchmarks/gpu.sh                    # on a CUDA machine; figures in benchmarks/out/gpu-YYYYmmdd-HHMMSS.txt
#   benchmarks/gpu.sh --out FILE         # the figures in FILE
#   benchmarks/gpu.sh --dry-run          # every step on the CPU with tiny sizes: checks the scripts and arguments
#   benchmarks/gpu.sh --only pretrain,loader   # some of the steps: label, pretrain, loader, moe
#
# It runs the python benchmarks beside it, each once per variant, and appends each one's output to the file
# under a "## step: command" heading, then a summary:
#
#   label     label_throughput.py: clasp label end to end / bare CLIP vision forward (ViT-B/16 built offline
#             with random weights, 448x224, bf16, batch 256), images/s and MFU of both; eager, then --compile
#   pretrain  pretrain_step.py: CLASP step / DINO step (preset base, batch 64, 2 + 6 crops, bf16), MFU of each
#             against the card's dense bf16 peak, images/s one step consumes; plain AdamW, then fused AdamW
#             with TF32, then the same with the batched MoE dispatch, then with --compile; the first also times
#             the --fixed-experts control (CLASP with its experts unrouted: what the routing costs)
#   loader    loader.py: images/s of one loader worker (2 + 6 crops, batch 64), so the summary can say how many
#             workers a GPU needs to keep up with the step
#   moe       moe_dispatch.py: PC-MoE loop / batched dispatch at the small and base shapes, fp32 and bf16
#
# The eager steps run first, the compiled ones last; each step's time limit is cut to what is left of the
# 8 minutes (BUDGET seconds, default 470), and a step with less than 20 s left is skipped, so the whole run
# stays under 8 minutes whatever compiling costs. A step that fails or runs out of time is noted in the file
# and the next one runs; the exit status is 1 when any failed. PYTHON (default: python) runs the scripts.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
DRY=0
OUT=""
ONLY="label,pretrain,loader,moe"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --only) ONLY=${2:?--only needs step names}; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for step in ${ONLY//,/ }; do
    case "$step" in label|pretrain|loader|moe) ;; *) echo "error: unknown step $step in --only" >&2; exit 2 ;; esac
done
if [ -z "$OUT" ]; then
    mkdir -p "$HERE/out"
    OUT="$HERE/out/gpu-$(date +%Y%m%d-%H%M%S)$([ $DRY = 1 ] && echo -dry-run).txt"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ $DRY = 1 ]; then
    DEVICE=cpu
    LIMIT=120
    COMPILE_LIMIT=120
    LABEL=(--preset tiny --images 8 --batch-size 4 --clip-size 64x32 --precision fp32 --no-peak --threads 1)
    PRETRAIN=(--preset tiny --depth 2 --dim 64 --heads 2 --dino-out-dim 64 --dino-hidden-dim 64 --moe-layers 1
              --experts 2 --top-k 1 --batch-size 2 --global-crops 1 --local-crops 1 --precision fp32 --warmup 1
              --max-warmup 1 --iters 1 --no-peak --threads 1)
    COMPILE=(--compile --compile-backend eager)  # dynamo's tracing alone: the flags, not inductor's minutes
    LOADER=(--images 32 --repeats 1 --batch-size 8)
    MOE=(--presets tiny --batch-size 1 --global-crops 1 --local-crops 1 --warmup 0 --iters 1 --threads 1)
else
    DEVICE=cuda
    LIMIT=150
    COMPILE_LIMIT=240
    LABEL=(--preset ViT-B/16 --images 2048 --batch-size 256 --clip-size 448x224 --precision bf16)
    PRETRAIN=(--preset base --batch-size 64 --global-crops 2 --local-crops 6 --precision bf16 --warmup 3 --iters 10)
    COMPILE=(--compile)
    LOADER=(--images 1024 --repeats 2 --batch-size 64)
    MOE=(--presets small base --batch-size 64 --warmup 3 --iters 10)
fi

{
    echo "# benchmarks/gpu.sh $([ $DRY = 1 ] && echo '--dry-run ')$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# $(cd "$HERE/.." && git rev-parse --short HEAD 2>/dev/null || echo 'no git') on $(hostname)"
    if [ $DRY = 0 ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/# GPU: /'
    fi
} > "$OUT"

FAILED=0
DEADLINE=$((SECONDS + ${BUDGET:-470}))
run() {  # run NAME LIMIT SCRIPT ARGS...: the script's output under a heading, its failure noted
    local name=$1 limit=$2
    shift 2
    echo "## $name: $*" >> "$OUT"
    local left=$((DEADLINE - SECONDS))
    if [ $left -lt 20 ]; then
        echo "SKIPPED: ${left} s left of the budget" >> "$OUT"
        return
    fi
    [ $left -lt "$limit" ] && limit=$left
    echo "== $name (at most $limit s)" >&2
    local started=$SECONDS
    (cd "$HERE" && timeout "$limit" "$PYTHON" "$@") >> "$OUT" 2>"$WORK/stderr"
    local status=$?
    if [ $status -ne 0 ]; then
        FAILED=$((FAILED + 1))
        echo "FAILED: exit $status$([ $status = 124 ] && echo " (past its ${limit} s)")" >> "$OUT"
        tail -n 20 "$WORK/stderr" >> "$OUT"
        tail -n 20 "$WORK/stderr" >&2
    fi
    echo "($((SECONDS - started)) s)" >> "$OUT"
}

wants() { [[ ",$ONLY," == *",$1,"* ]]; }

if wants label; then
    run "label eager" "$LIMIT" label_throughput.py --device "$DEVICE" --work "$WORK/label" "${LABEL[@]}"
fi
if wants pretrain; then
    run "pretrain plain AdamW" "$LIMIT" pretrain_step.py --device "$DEVICE" "${PRETRAIN[@]}" --fixed-experts
    run "pretrain fused AdamW, TF32" "$LIMIT" pretrain_step.py --device "$DEVICE" "${PRETRAIN[@]}" --fused-adamw --tf32
    run "pretrain fused AdamW, TF32, batched MoE" "$LIMIT" pretrain_step.py --device "$DEVICE" "${PRETRAIN[@]}" \
        --fused-adamw --tf32 --moe-dispatch batched
fi
if wants loader; then
    run "loader, one worker" "$LIMIT" loader.py --workdir "$WORK/loader" "${LOADER[@]}"
fi
if wants moe; then
    run "MoE dispatch" "$LIMIT" moe_dispatch.py --device "$DEVICE" "${MOE[@]}"
fi
if wants label; then  # the model and the images are already in $WORK/label
    run "label compiled" "$COMPILE_LIMIT" label_throughput.py --device "$DEVICE" --work "$WORK/label" \
        "${LABEL[@]}" "${COMPILE[@]}"
fi
if wants pretrain; then
    run "pretrain compiled, fused AdamW, TF32" "$COMPILE_LIMIT" pretrain_step.py --device "$DEVICE" "${PRETRAIN[@]}" \
        --fused-adamw --tf32 "${COMPILE[@]}"
fi

{
    echo "## summary"
    awk '/^## / { step = substr($0, 4, index($0, ":") - 4) }
         /^(ratio |time ratio |FLOP ratio |control |routing |images\/s one step consumes)/ ||
         /^(shards per worker|baseline |end to end |FAILED|SKIPPED)/ ||
         / MFU/ { print step ": " $0 }' "$OUT"
    # the fastest CLASP step of the pretrain variants against one worker's rate: the workers a GPU needs
    awk '/^images\/s one step consumes: CLASP/ { v = $6 + 0; if (v > step) step = v }
         /^shards per worker:/ { worker = $4 + 0 }
         END { if (step > 0 && worker > 0)
                   printf "loader workers to keep up with the fastest CLASP step: %d (%.1f images/s a step, %.1f a worker)\n",
                          int(step / worker) + (step % worker > 0), step, worker }' "$OUT"
    echo "steps failed: $FAILED"
    echo "whole run: $SECONDS s"
} >> "$OUT.summary"
cat "$OUT.summary" >> "$OUT"
rm -f "$OUT.summary"
echo "figures in $OUT" >&2
[ $FAILED -eq 0 ]
