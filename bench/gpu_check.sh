#!/usr/bin/env bash
# The GPU check: one command, under nine minutes on a bare GPU machine (an H100/H200 with Python 3.12, torch and
# Triton preinstalled, no network), from the source tree plus the wheels folder `.whl/` (about 50 MiB).
#
#   bash bench/gpu_check.sh [--out DIR] [--only STAGE,...]      on the GPU machine; DIR defaults to $OUT;
#                                                               --only: these stages after setup (always run)
#   bash bench/gpu_check.sh --dry-run --out DIR [--only ...]    every stage at tiny shapes on a CPU (< 2 min)
#   bash bench/gpu_check.sh --fetch-wheels                      fills .whl/ (a machine with PyPI access)
#
# Stages, in order, each with its own time limit (seconds), so that a slow one cannot starve the rest:
#   setup       check that CUDA is there, install .whl/*.whl with pip --no-index into a fresh temp folder, GPU faiss from
#               .whl/faiss-gpu, and start building sae_fast._C in the background (needed by the tests only, which
#               run last; its outcome is reported as stage `build`, time "since setup")
#   step        training step side by side with sparsify (and a dense torch SAE, beside the GEMM floor) at
#               (768, 2^14), (2048, 2^17), (4096, 2^20), bf16 + SignSGD and bf16 + low-memory Adam
#   match       exact matching, both directions, at (2^17, 2048): torch (fp32/bf16/fp16, fused Triton kernel)
#               and faiss (knn_gpu bf16, IndexFlatIP)
#   tests       pytest -m gpu, all but the (4096, 2^20) sizes
#   tests-2m20  pytest -m gpu, the (4096, 2^20) sizes (the slowest)
# GPU-only extra stages, run only when named in --only (e.g. --only stability, after setup), each best a call
# of its own: step-fp32 (the anchors' fp32 + Adam setting at F <= 2^17), kernels (each kernel alone), sweep
# (encoder variants and tile configs), match-sweep (fused matching launch configs), train (32 seeds in one run vs
# separate runs), stability (96 seeds of (2^14, 768), all anchors), stability-2m20 (32 seeds of (2^20, 4096)),
# study (MiniLM study on the GPU; carry .gpu_study, made by `python bench/pack_minilm.py .gpu_study`).
# Every default stage checks what it measures (step: finite losses, first loss = the dense baseline's; match:
# exact methods equal the float32 result everywhere). Results: DIR/results.md (the stage table, then each stage's
# tables) and DIR/<stage>.log, DIR/build.log; past 8 files (the most the device tool brings back) the logs are
# packed into DIR/logs.tar.gz. Exit status 0 only when every stage passed.
# GPU_CHECK_BUDGETS="step=100 match=60" overrides limits (tests, rehearsals); PYTHON picks the interpreter.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
TOTAL=525            # seconds for all stages together: nine minutes with room for the summary
RESERVE=8            # kept back for the summary
BUILD_LIMIT=240      # the background build of sae_fast._C (reported as stage `build`)
declare -A BUDGET=([setup]=30 [step]=150 [match]=80 [tests]=190 [tests-2m20]=75 [step-fp32]=220 [kernels]=200
                  [sweep]=200 [match-sweep]=150 [train]=300 [stability]=300 [stability-2m20]=510 [study]=510)
STAGES=(setup step match tests tests-2m20)
EXTRAS=" step-fp32 kernels sweep match-sweep train stability stability-2m20 study "
dry=0 fetch=0 out="${OUT:-}" only=""

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --fetch-wheels) fetch=1 ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift ;;
    --only) [ $# -ge 2 ] || usage; only=$2; shift ;;
    -h|--help) usage ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
if [ $fetch = 1 ]; then exec bash bench/gpu_check/fetch_wheels.sh; fi
if [ -z "$out" ]; then
  echo "gpu_check.sh: no results folder: pass --out DIR (under the device tool, \$OUT is used)" >&2; exit 2
fi
for kv in ${GPU_CHECK_BUDGETS:-}; do
  name=${kv%%=*}
  [ -n "${BUDGET[$name]+x}" ] || { echo "gpu_check.sh: GPU_CHECK_BUDGETS: unknown stage '$name'" >&2; exit 2; }
  [[ ${kv#*=} =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: GPU_CHECK_BUDGETS: '$kv' is not NAME=SECONDS" >&2; exit 2; }
  BUDGET[$name]=${kv#*=}
done
if [ -n "$only" ]; then  # setup always runs first: the other stages need what it installs
  IFS=, read -r -a picked <<< "$only"
  STAGES=(setup)
  for s in "${picked[@]}"; do
    [ "$s" = setup ] || STAGES+=("$s")
    [ -n "${BUDGET[$s]+x}" ] || { echo "gpu_check.sh: --only: unknown stage '$s'" >&2; exit 2; }
    if [ $dry = 1 ] && [[ $EXTRAS == *" $s "* ]]; then
      echo "gpu_check.sh: --only: stage '$s' runs on a GPU only (no --dry-run)" >&2; exit 2
    fi
  done
fi
mkdir -p "$out" || { echo "gpu_check.sh: --out: cannot create '$out'" >&2; exit 2; }
out=$(cd "$out" && pwd)
if [ -e "$out/results.md" ]; then
  echo "gpu_check.sh: --out: '$out' already holds results.md; give an empty folder" >&2; exit 2
fi
[ -w "$out" ] || { echo "gpu_check.sh: --out: '$out' is not writable" >&2; exit 2; }

export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
PY=${PYTHON:-python3}
records=$(mktemp)
build_pid="" build_t0=0 work=""
trap 'rm -f "$records"; [ -z "$work" ] || rm -rf "$work"' EXIT
if [ $dry = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""   # the CPU paths and the Triton interpreter, even on a GPU host
fi
start=$SECONDS

stage() {  # stage NAME COMMAND...: run under min(budget, time left), log to $out/NAME.log, record the outcome
  local name=$1
  shift
  local left=$((TOTAL - RESERVE - (SECONDS - start)))
  local limit=${BUDGET[$name]}
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $name (limit ${limit}s of ${BUDGET[$name]}s) $(date -u +%T)"
  local t0=$SECONDS rc
  if [ "$limit" -le 0 ]; then
    echo "no time left" > "$out/$name.log"; rc=124
  else
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
  fi
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - t0))" "$rc" >> "$records"
}

setup() {  # runs in this shell: it exports the paths that later stages use
  local t0=$SECONDS rc=0
  {
    echo "tree: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.cuda.is_available())" || rc=1
    if [ $dry = 1 ]; then setup_dry || rc=1; else setup_gpu || rc=1; fi
  } > "$out/setup.log" 2>&1
  echo "=== setup rc=$rc in $((SECONDS - t0)) s"
  printf 'setup\t%s\t%s\t%s\n' "${BUDGET[setup]}" "$((SECONDS - t0))" "$rc" >> "$records"
}

install_wheels() {  # install_wheels TARGET: the wheels of .whl/ without an index
  local wheels=("$ROOT"/.whl/*.whl)
  if [ ! -e "${wheels[0]}" ]; then echo "no wheels in .whl/ (fill it with --fetch-wheels)"; return 0; fi
  ls -l "${wheels[@]}"
  timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$1" "${wheels[@]}"
}

setup_gpu() {
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: use --dry-run on a CPU'" || return 1
  work=$(mktemp -d)           # installed wheels, the extension's build folder, the study's output
  install_wheels "$work/site" || return 1
  export PYTHONPATH="$ROOT:$work/site${PYTHONPATH:+:$PYTHONPATH}"
  ln -sfn ../kernels sae_fast/kernels      # the package layout pip's install would give (no index there)
  if [ -f .whl/faiss-gpu/activate.sh ]; then
    # shellcheck disable=SC1091
    source .whl/faiss-gpu/activate.sh .whl/faiss-gpu
    "$PY" -c "import faiss; print('faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus())"
  else
    echo "no .whl/faiss-gpu: faiss rows are left out"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  build_t0=$SECONDS
  (timeout "$BUILD_LIMIT" nice -n 19 bash -c "cmake -S . -B '$work/build' -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_LIBRARY_OUTPUT_DIRECTORY='$ROOT/sae_fast' -DPython_EXECUTABLE='$(command -v "$PY")' \
    -Dpybind11_DIR=\"\$('$PY' -m pybind11 --cmakedir)\" -DCMAKE_PREFIX_PATH='$work/site/cmeel.prefix' \
    && cmake --build '$work/build' -j 8") > "$out/build.log" 2>&1 &
  build_pid=$!
  echo "building sae_fast._C in the background (pid $build_pid, log build.log)"
}

setup_dry() {
  local tmp
  tmp=$(mktemp -d)
  install_wheels "$tmp/site" || return 1   # the same install, into a folder that is thrown away
  rm -rf "$tmp"
  [ -f .whl/faiss-gpu/activate.sh ] && echo "found .whl/faiss-gpu ($(du -sh .whl/faiss-gpu | cut -f1))"
  "$PY" -c "import sae_fast._C as c; print('sae_fast._C already built:', c.__file__)" > "$out/build.log" 2>&1
}

wait_build() {  # the tests need sae_fast._C
  [ -n "$build_pid" ] || return 0
  local rc
  wait "$build_pid"
  rc=$?
  build_pid=""
  echo "=== build rc=$rc (build.log)"
  printf 'build\t%s\t%s\t%s\n' "$BUILD_LIMIT" "$((SECONDS - build_t0))" "$rc" >> "$records"
}

run_extra() {  # the GPU-only stages named in --only
  local name=$1
  case $name in
    step-fp32) stage "$name" "$PY" bench/test_sae_step.py --shapes 768x16384,768x131072,2048x131072 \
      --modes fp32-adam ;;
    kernels) stage "$name" "$PY" bench/test_sae_step.py --kernels --no-table \
      --shapes 768x16384,2048x131072,4096x262144,4096x1048576 ;;
    sweep) stage "$name" "$PY" bench/encoder_sweep.py ;;
    match-sweep) stage "$name" "$PY" bench/match_sweep.py ;;
    train) stage "$name" "$PY" bench/test_train.py --gpu ;;
    stability) stage "$name" "$PY" bench/test_match.py --device cuda --stability-only \
      --stability-settings 96x16384x768xall ;;
    stability-2m20) stage "$name" "$PY" bench/test_match.py --device cuda --stability-only \
      --stability-settings 32x1048576x4096x0 --stability-variants "default stack, triton" ;;
    study) stage "$name" env PYTHONPATH="$ROOT/.gpu_study/site:${PYTHONPATH:-}" "$PY" -m sae_fast study \
      --out "$work/study" --model-path .gpu_study/model --device cuda --splice-texts 0 --no-progress \
      --num-seeds 16 --expansion-factor 21 --k 32 --train-texts 60000 --eval-texts 2000 --total-tokens 2000000 \
      --train-batch-size 4096 --refit-steps 200 --finetune-steps 200 ;;
  esac
}

run_stage() {
  local name=$1 sizes
  case $name in
    setup) setup ;;
    step)
      if [ $dry = 1 ]; then sizes=(--device cpu --shapes 64x512 --n-tokens 256 --k 8 --reps 2)
      else sizes=(--shapes 768x16384,2048x131072,4096x1048576); fi
      stage step "$PY" bench/test_sae_step.py "${sizes[@]}" --modes bf16-signsgd,bf16-lmadam ;;
    match)
      if [ $dry = 1 ]; then sizes=(--device cpu --sizes 256x32 --low-precision)
      else sizes=(--device cuda --sizes 131072x2048); fi
      stage match "$PY" bench/test_match.py "${sizes[@]}" --cases random,planted --faiss-kinds flat ;;
    tests|tests-2m20)
      wait_build
      local select=(-k "not 4096x2") part=small
      [ "$name" = tests ] || { select=(-k "4096x2"); part=large; }
      if [ $dry = 1 ]; then
        stage "$name" "$PY" bench/gpu_check/dry_tests.py --part "$part"
      else
        local per_test=()  # one test's limit, where pytest-timeout is installed (the GPU image has it)
        "$PY" -c "import pytest_timeout" 2> /dev/null && per_test=(--timeout=150)
        stage "$name" "$PY" -m pytest -m gpu "${select[@]}" "${per_test[@]}" -q -rA --durations=0 \
          -p no:cacheprovider tests
      fi ;;
    *) run_extra "$name" ;;
  esac
}

for s in "${STAGES[@]}"; do run_stage "$s"; done
wait_build
"$PY" bench/gpu_check/summary.py --out "$out" --records "$records" --total "$((SECONDS - start))" \
  $([ $dry = 1 ] && echo --dry-run)
status=$?
if [ "$(find "$out" -maxdepth 1 -type f | wc -l)" -gt 8 ]; then  # more than the device tool brings back
  (cd "$out" && tar -czf logs.tar.gz ./*.log && rm -f ./*.log && echo "logs packed into $out/logs.tar.gz")
fi
exit $status
