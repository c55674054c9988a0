#!/usr/bin/env bash
# Everything sae_fast does on a GPU, in stages, for one lease of the lent machine (see bench/RESULTS.md).
#   bash bench/run_gpu.sh STAGE...   stages: setup tests sweep kernels step step-short train match match-sweep
#                                    stability stability-2m20 study
# TESTS_K=EXPR narrows the tests stage (pytest -k); TESTS_LIMIT, STEP_LIMIT, TRAIN_LIMIT, MATCH_LIMIT: seconds;
# ENCODER=cublas|tiles|running picks sae_fast's encoder in step-short.
# setup installs what the GPU image lacks from ./.whl (eai-sparsify and its pure-Python needs, cmeel-eigen),
# links kernels/ as sae_fast/kernels (no pip install: no index there) and builds sae_fast._C in the background.
# Each stage logs to $OUT/<stage>.log and has its own time limit; a failing stage does not stop the next.
set -u
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
OUT=${OUT:-/tmp/sae_fast_gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:/tmp/site

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"
}

for s in "$@"; do
  case $s in
    setup)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      ln -sfn ../kernels sae_fast/kernels
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
      # model weights already on the image (for a study on a real LM there; nothing can be downloaded)
      (ls -d ~/.cache/huggingface/hub/* /root/.cache/torch/* 2>/dev/null; find / -xdev \( -name '*.safetensors' \
        -o -name 'pytorch_model.bin' \) -size +20M 2>/dev/null | head -20) > "$OUT/models.log"
      (cmake -S . -B /tmp/build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/sae_fast" \
        -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
        -DCMAKE_PREFIX_PATH=/tmp/site/cmeel.prefix && cmake --build /tmp/build -j 8) > "$OUT/build.log" 2>&1 &
      ;;
    tests)
      stage tests "${TESTS_LIMIT:-360}" python3 -m pytest -m gpu -q -rA -s --durations=20 --timeout=300 -p no:cacheprovider -k "${TESTS_K:-}" tests ;;
    sweep)
      stage sweep 200 python3 bench/encoder_sweep.py ;;
    kernels)
      stage kernels 200 python3 bench/test_sae_step.py --kernels --no-table \
        --shapes 768x16384,2048x131072,4096x262144,4096x1048576 ;;
    step)
      stage step 540 python3 bench/test_sae_step.py ;;
    step-short)  # the anchors' setting at F <= 2^17, and the 2^20 memory-light modes
      enc=${ENCODER:+--encoder $ENCODER}
      stage "step-short${ENCODER:+-$ENCODER}" "${STEP_LIMIT:-220}" bash -c "python3 bench/test_sae_step.py $enc \
        --shapes 768x16384,768x131072,2048x131072 --modes fp32-adam && python3 bench/test_sae_step.py $enc \
        --shapes 4096x1048576 --modes bf16-signsgd,bf16-lmadam" ;;
    train)
      stage train "${TRAIN_LIMIT:-300}" python3 bench/test_train.py --gpu ;;
    match)  # the pair table at (2^14, 768), (2^17, 2048), (2^20, 4096)
      stage match "${MATCH_LIMIT:-400}" python3 bench/test_match.py --device cuda ;;
    match-sweep)  # launch configs of the fused matching kernel
      stage match-sweep 150 python3 bench/match_sweep.py ;;
    stability)  # 96 seeds of (2^14, 768), every seed an anchor: one pair per sweep vs stacked, torch vs triton
      stage stability 300 python3 bench/test_match.py --device cuda --stability-only \
        --stability-settings 96x16384x768xall ;;
    stability-2m20)  # 32 seeds of (2^20, 4096), one anchor: ~8 min at the target, a call of its own
      stage stability-2m20 590 python3 bench/test_match.py --device cuda --stability-only \
        --stability-settings 32x1048576x4096x0 --stability-variants "default stack, triton" ;;
    study)  # the study on MiniLM at a larger scale, trained on the GPU; carry .gpu_study, made here by
      # `python bench/pack_minilm.py .gpu_study` (fp16 first 4 blocks + the texts, ~42 MiB; no splice analysis then)
      stage study 590 env PYTHONPATH="$PWD/.gpu_study/site:$PYTHONPATH" python3 -m sae_fast study --out "$OUT/study" \
        --model-path .gpu_study/model --device cuda --splice-texts 0 --no-progress --num-seeds 16 \
        --expansion-factor 21 --k 32 --train-texts 60000 --eval-texts 2000 --total-tokens 2000000 \
        --train-batch-size 4096 --refit-steps 200 --finetune-steps 200 ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
wait
for f in "$OUT"/*.log; do echo "----- tail $f"; tail -n 25 "$f"; done
