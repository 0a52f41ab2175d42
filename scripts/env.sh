# Sourced by scripts/main.sh and scripts/test.sh: creates .venv, installs the pinned torch
# and the tools, and builds fastallreduce._C. Safe to rerun: each step is skipped or
# incremental when already done.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TORCH_PIN="${FASTALLREDUCE_TORCH:-torch==2.14.1}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[env] creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.fastallreduce-deps"
want="$TORCH_PIN ninja pytest pytest-timeout pytest-benchmark tqdm matplotlib scikit-learn numpy"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[env] installing $want"
  t0=$(date +%s)
  python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  python -m pip install -q $want
  echo "$want" > "$stamp"
  echo "[env] dependencies installed in $(( $(date +%s) - t0 )) s"
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda   # torch would guess /usr/local from the nvcc wrapper
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# pip builds in a fresh temporary directory every time (about 3 minutes here), so skip it when
# nothing that goes into the build changed since the last one: sources, build files, settings.
src_hash=$( (find csrc -type f -print0 | sort -z | xargs -0 sha1sum
             sha1sum setup.py pyproject.toml
             echo "${FASTALLREDUCE_CUDA:-} ${TORCH_CUDA_ARCH_LIST:-} ${CUDA_HOME:-} $TORCH_PIN") | sha1sum | cut -d' ' -f1)
build_stamp=".venv/.fastallreduce-build"
if [ -f "$build_stamp" ] && [ "$(cat "$build_stamp")" = "$src_hash" ] &&
   python -c "import fastallreduce._C" >/dev/null 2>&1; then
  echo "[env] fastallreduce._C is up to date (no source or build setting changed since the last build)"
else
  t0=$(date +%s)
  echo "[env] building fastallreduce._C (pip install --no-build-isolation -e .)"
  rm -f "$build_stamp"
  python -m pip install -q --no-build-isolation --no-deps -e .
  echo "$src_hash" > "$build_stamp"
  echo "[env] build done in $(( $(date +%s) - t0 )) s"
fi
