#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what bench/gpu_check.sh installs on a GPU machine without network; run it
# (`bash bench/gpu_check.sh --fetch-wheels`) on an x86-64 machine that reaches PyPI, from any folder.
#   .whl/*.whl        eai-sparsify 1.3.3 and the pure-Python modules its model needs that the GPU image lacks
#                     (simple-parsing, docstring-parser, natsort), cmeel-eigen + cmeel (Eigen headers for the
#                     C++ extension's build): Python 3.12 wheels, about 6 MiB
#   .whl/faiss-gpu/   GPU faiss for a CUDA-13-only machine (about 48 MiB), made by prepare.sh of the
#                     faiss-gpu-cuda13 tools (FAISS_GPU_TOOLS, default /work/shared/tools/faiss-gpu-cuda13);
#                     left out, with a note, when those tools are not there
# Old wheels are removed first (two versions of one package stop the install). At the end it prints the size that
# travels to the GPU machine (tracked files + .whl/), which must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download -q --no-deps "${plat[@]}" -d .whl eai-sparsify==1.3.3 simple-parsing==0.1.9 \
  docstring-parser==0.18.0 natsort==8.4.0 cmeel-eigen==3.4.1 cmeel==0.62.0
tools=${FAISS_GPU_TOOLS:-/work/shared/tools/faiss-gpu-cuda13}
if [ -f "$tools/prepare.sh" ]; then
  rm -rf .whl/faiss-gpu
  bash "$tools/prepare.sh" .whl/faiss-gpu
else
  echo "no $tools/prepare.sh (set FAISS_GPU_TOOLS): the GPU check will run without faiss" >&2
fi
ls -l .whl
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb .whl | cut -f1)
total=$(( (tracked + wheels) / 1048576 ))
echo "travels: tracked files $((tracked / 1048576)) MiB + .whl $((wheels / 1048576)) MiB = ${total} MiB (limit 64)"
[ "$total" -lt 64 ] || { echo "over the 64 MiB a device call carries" >&2; exit 1; }
