#!/usr/bin/env bash
# Every GPU check of the project in one run (< 10 min on one H100/H200): the `gpu` tests, then the training, inference
# and degradation benchmarks, each printing ours vs its reference measured in the same run. One table per file under
# $OUT (the device tool's folder) or ./gpu-check-out, plus summary.md with each step's exit status and time.
#
#   benchmarks/gpu_check.sh --prepare   # once, on the CPU machine with the project's venv: copies BasicSR (pure
#                                       # Python, the degradation reference) into .gpu_deps/ (git-ignored)
#   benchmarks/gpu_check.sh             # on the GPU machine; with the device tool: carry [".gpu_deps"], timeout 600
#   benchmarks/gpu_check.sh --cpu       # dry mode: the same steps at tiny sizes on the CPU (proves the script)
#
# The GPU machine has CUDA torch and pytest but not this project's venv: the script runs the repository from source
# (PYTHONPATH) with the machine's python3, and .gpu_deps/ adds BasicSR. Everything the `gpu` tests and the benchmarks
# import is in that machine's image (checked against its package list); a missing package fails only its own step.
# Steps run under their own time limit, so one hung step cannot eat the others' time.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="gpu"
case "${1:-}" in
  --prepare) MODE="prepare" ;;
  --cpu) MODE="cpu" ;;
  "") ;;
  *) echo "usage: $0 [--prepare | --cpu]" >&2; exit 2 ;;
esac

if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="${PYTHON:-$ROOT/.venv/bin/python}"; else PY="${PYTHON:-python3}"; fi

if [[ "$MODE" == "prepare" ]]; then
  src="$("$PY" -c 'import importlib.util as u; print(u.find_spec("basicsr").submodule_search_locations[0])')" || {
    echo "BasicSR is not importable with $PY: install the project's venv first (README, Installation)" >&2; exit 1; }
  rm -rf "$ROOT/.gpu_deps" && mkdir -p "$ROOT/.gpu_deps"
  cp -r "$src" "$ROOT/.gpu_deps/basicsr"
  find "$ROOT/.gpu_deps" -name __pycache__ -prune -exec rm -rf {} +
  echo "copied $src -> .gpu_deps/basicsr ($(du -sh "$ROOT/.gpu_deps" | cut -f1)); carry .gpu_deps on the GPU run"
  exit 0
fi

OUTDIR="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$ROOT:$ROOT/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SUMMARY="$OUTDIR/summary.md"
cd "$ROOT" || exit 1

if [[ "$MODE" == "gpu" ]]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "no CUDA device visible to $PY; use --cpu for the dry mode" >&2; exit 1; }
  TESTS=(-m gpu tests/unit/model/test_transformer.py tests/unit/model/test_training_kernels.py
         tests/unit/model/test_tokenizer_train.py tests/unit/train/test_fsdp.py)
  # full-depth Infinity-2B on the 512² schedule: plain (the 19.3 % baseline), then FlexAttention + per-block compile
  TRAIN_BASE=(--repeats 3 --batch 2 --depth-2b 32 --pn-2b 0.25M --no-tiny)
  TRAIN_FAST=("${TRAIN_BASE[@]}" --attention flex --compile)
  INFER=(--device cuda --shapes tiny nsarm-8b --pn 1M --repeats 2)
  DEGRADE=(--device cuda --n 32 --batch 16 --size 1024)
  LIMITS=(180 100 170 70 50)  # 570 s at most: inside the device tool's 600 s per command
else
  TESTS=(tests/unit/model/test_training_kernels.py)  # the CPU halves of the checks the gpu tests repeat on CUDA
  TRAIN_BASE=(--threads 2 --repeats 1 --batch 1 --depth-2b 1 --width-2b 256 --pn-2b 0.06M)
  # aot_eager traces the compiled blocks (dynamo + AOT autograd) without inductor's minutes of C++ codegen on a CPU
  TRAIN_FAST=("${TRAIN_BASE[@]}" --no-tiny --attention flex --compile --compile-backend aot_eager)
  INFER=(--device cpu --shapes tiny --pn 0.06M --repeats 1)
  DEGRADE=(--device cpu --n 2 --batch 2 --size 256)
  LIMITS=(300 300 300 300 300)
fi

{
  echo "# GPU check ($MODE mode), $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo '```'
  "$PY" -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo '```'
  echo
  echo "| step | exit | seconds | table |"
  echo "|---|---|---|---|"
} >"$SUMMARY"

# step NAME LIMIT_S CMD...: run CMD under a time limit, its output in NAME.txt, one summary row
step() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS rc
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$name.txt" 2>&1
  rc=$?
  [[ $rc == 124 || $rc == 137 ]] && echo "(killed at the ${limit}s limit)" >>"$OUTDIR/$name.txt"
  echo "| $name | $rc | $((SECONDS - t0)) | $name.txt |" >>"$SUMMARY"
  tail -n 15 "$OUTDIR/$name.txt"
}

step tests "${LIMITS[0]}" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step training "${LIMITS[1]}" "$PY" benchmarks/training.py "${TRAIN_BASE[@]}"
step training-flex-compile "${LIMITS[2]}" "$PY" benchmarks/training.py "${TRAIN_FAST[@]}"
step inference "${LIMITS[3]}" "$PY" benchmarks/inference.py "${INFER[@]}"
step degradation "${LIMITS[4]}" "$PY" benchmarks/degradation.py "${DEGRADE[@]}"
echo
cat "$SUMMARY"
! grep -qE '^\| [a-z-]+ \| [1-9]' "$SUMMARY"
