#!/usr/bin/env bash
# The ONE GPU job for issue 4 (fused kernels), sized for < 8 minutes on one H100/H200 including
# torch.compile warmups. Runs benchmarks/throughput.py's matrix in one process (gpt2-52m and
# gpt2-125m; bf16, batch 32 x 1024: the plain-HF baseline, the fused_kernels bundle, the bundle at
# batch 64), a profile of the bundle's step (benchmarks/profile_step.py), an ablation of the bundle
# while the time budget lasts, then, if time is left and the reference scripts are in the tree
# (shared/anchors/ or $ANCHORS_DIR), the hand-written minimal GPT-2 ceiling on the same card.
# JSON and logs go to $OUT (default benchmarks/results).
#
#   bash benchmarks/gpu_benchmark.sh            # on the GPU machine
#   bash benchmarks/gpu_benchmark.sh --smoke    # anywhere: gpt2-tiny, 2 steps, checks the plumbing
#
# Missing Python packages (pydantic on the GPU image) are installed from wheels in .whl/ if present.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
START=$SECONDS
export PYTHONUNBUFFERED=1

if ! python3 -c "import pydantic" 2>/dev/null; then
  [[ -d .whl ]] || { echo "pydantic is missing and there is no .whl/ to install it from"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import composerlite.algorithms.fused_kernels, importlib.metadata as m; assert any(e.name == 'fused_kernels' for e in m.entry_points(group='composerlite.algorithms'))" 2>/dev/null; then
  # entry points (the algorithm registry) need an install; offline, no dependency resolution
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 2
fi
python3 - <<'PY'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
PY

if [[ $SMOKE == 1 ]]; then
  python3 benchmarks/throughput.py --smoke --device cpu --variants baseline fused_kernels fused_kernels@4 \
      'fused_kernels:exclude=[fused_cross_entropy]' --out "$OUT/throughput_smoke.json" 2>&1 | tee "$OUT/throughput_smoke.log"
  STATUS=${PIPESTATUS[0]}
  python3 benchmarks/profile_step.py --smoke --algo fused_kernels --out "$OUT/profile_smoke.json" || STATUS=1
  exit "$STATUS"
fi

# Most important first: the budget stops starting new runs, never cuts one in half.
# 1. the targets: baseline, the bundle at batch 32 and 64, both models
python3 benchmarks/throughput.py --device cuda --precision bf16 --models gpt2-52m gpt2-125m --seq-len 1024 --batch-size 32 \
    --steps 10 --warmup-steps 3 --budget-s 240 \
    --variants baseline fused_kernels fused_kernels@64 \
    --out "$OUT/throughput_gpu.json" 2>&1 | tee "$OUT/throughput_gpu.log"
STATUS=${PIPESTATUS[0]}

# 2. where the bundle's step goes (device busy fraction, top kernels, syncs a step)
timeout 120 python3 benchmarks/profile_step.py --device cuda --model gpt2-52m --algo fused_kernels \
    --out "$OUT/profile_gpu_52m.json" 2>&1 | tail -40  # (a device run returns at most 8 files)

# 3. one method at a time off the bundle, to see what each contributes now (budget permitting)
LEFT=$((380 - (SECONDS - START)))
if [[ $LEFT -gt 60 ]]; then
  python3 benchmarks/throughput.py --device cuda --precision bf16 --models gpt2-52m --seq-len 1024 --batch-size 32 \
      --steps 10 --warmup-steps 3 --budget-s "$LEFT" \
      --variants 'fused_kernels:exclude=[fused_cross_entropy]' 'fused_kernels:exclude=[flash_attention]' \
                 'fused_kernels:exclude=[fused_gpt2_blocks]' compile \
      --out "$OUT/throughput_gpu_ablation.json" 2>&1 | tee "$OUT/throughput_gpu_ablation.log"
fi

ANCHORS="${ANCHORS_DIR:-shared/anchors}"
LEFT=$((480 - (SECONDS - START)))
if [[ -f "$ANCHORS/gpu_ceiling.py" && $LEFT -gt 120 ]]; then
  echo "== reference ceiling (hand-written minimal GPT-2), ${LEFT}s left =="
  timeout "$LEFT" python3 "$ANCHORS/gpu_ceiling.py" 2>&1 | tee "$OUT/gpu_ceiling.log"
else
  echo "== reference ceiling skipped (${LEFT}s left; $ANCHORS/gpu_ceiling.py present: $([[ -f $ANCHORS/gpu_ceiling.py ]] && echo yes || echo no)) =="
fi
echo "total $((SECONDS - START)) s"
exit "$STATUS"
