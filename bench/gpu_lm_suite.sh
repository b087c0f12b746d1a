#!/usr/bin/env bash
# The language-model measurements of BENCHMARKS.md on a lent GPU, as one device call.
#
#   bash bench/gpu_lm_suite.sh speed   # DP vs non-private: one step, and 50 steps end to end
#   bash bench/gpu_lm_suite.sh smoke   # the speed benchmark + every training path for 3 steps
#   bash bench/gpu_lm_suite.sh full    # the quality / canary runs at epsilon 8 (the default
#                                      # RUNS trained for 349 s in all on an H200, 2026-11)
#
# Expects, carried beside the working tree (see BENCHMARKS.md): bench/out/base_fp16 (the base
# weights as float16, upcast on load), bench/out/whl (opacus, dp-accounting, dm-tree wheels) and
# bench/out/model_bench_data.pt (model_bench_data.py). Writes its outputs under $OUT.
set -u
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
[ -n "${NO_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site bench/out/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, opacus; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'opacus', opacus.__version__)"
BASE=(--base bench/out/base_fp16)
case "${1:-smoke}" in
speed)
  python3 bench/bench_model_speed.py "${BASE[@]}" --batch 64 --rounds 5 --chunk 64 \
    --engines opacus 2>&1 | grep -v "Loading weights" | tee "$OUT/speed.txt"
  python3 bench/bench_model_speed.py "${BASE[@]}" --batch 64 --rounds 3 --chunk 64 \
    --engines opacus --no-amp 2>&1 | grep -v "Loading weights" | tee "$OUT/speed_fp32.txt"
  # end to end: 50 Poisson-sampled steps of 256 senders, non-private then DP, same settings
  timeout 70 python3 bench/bench_model_quality.py "${BASE[@]}" --steps 50 --pairs 100 \
    --runs np-mlm@5e-5,dp-mlm@5e-5 --out "$OUT/e2e.json" 2>&1 | grep -v "Loading weights" \
    | tail -6
  ;;
smoke)
  python3 bench/bench_model_speed.py "${BASE[@]}" --batch 64 --rounds 5 --chunk 64 \
    --engines opacus 2>&1 | grep -v "Loading weights" | tee "$OUT/speed.txt"
  python3 bench/bench_model_speed.py "${BASE[@]}" --batch 64 --rounds 3 --chunk 64 \
    --engines opacus --no-amp 2>&1 | grep -v "Loading weights" | tee "$OUT/speed_fp32.txt"
  python3 bench/bench_model_quality.py "${BASE[@]}" --steps 3 --pairs 100 \
    --runs dp-mlm,dp-contrastive,np-mlm:L6 --out "$OUT/smoke.json" 2>&1 \
    | grep -v "Loading weights" | tail -12
  ;;
full)
  python3 bench/bench_model_quality.py "${BASE[@]}" --steps 200 --batch 256 \
    --runs "${RUNS:-dp-mlm@5e-5,dp-mlm,np-mlm,np-contrastive,dp-contrastive@5e-5}" \
    --out "$OUT/quality.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/quality.txt"
  ;;
esac
