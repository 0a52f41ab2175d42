# Sourced by scripts/main.sh and scripts/test.sh: creates .venv, installs the pinned torch
# and the tools, and builds fastallreduce._C. Safe to rerun: each step is skipped or
# incremental when already done.
#   FASTALLREDUCE_TORCH=torch==2.11.0   another torch release in the venv (default: the pin)
#   FASTALLREDUCE_TORCH=installed       no venv: the torch that $PYTHON already has (the user's
#                                       environment; any torch from 2.11), tools added if missing
#   FASTALLREDUCE_VENV=.venv-oldest     another venv directory (default .venv)
#   PYTHON=python3.12                   the interpreter (default python3)
#   FASTALLREDUCE_DEPS_ONLY=1           stop after the dependencies (no build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TORCH_PIN="${FASTALLREDUCE_TORCH:-torch==2.14.1}"
PY="${PYTHON:-python3}"
TOOLS="ninja pytest pytest-timeout pytest-benchmark tqdm matplotlib scikit-learn numpy"
if [ "$TORCH_PIN" = "installed" ]; then
  # The user's own environment: nothing replaces their torch.
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[env] FASTALLREDUCE_TORCH=installed, but $PY has no torch: install torch (2.11 or newer) first" >&2
    return 1 2>/dev/null || exit 1
  fi
  PYBIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
  export PATH="$PYBIN:$PATH"
  python() { "$PY" "$@"; }
  state_dir="$ROOT/build/env-installed"
  mkdir -p "$state_dir"
  want="installed $("$PY" -c 'import torch; print(torch.__version__)') $TOOLS"
  pip_args="$TOOLS"
else
  VENV="${FASTALLREDUCE_VENV:-.venv}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  # shellcheck disable=SC1090
  . "$VENV/bin/activate"
  state_dir="$VENV"
  want="$TORCH_PIN $TOOLS"
  pip_args="$want"
fi
stamp="$state_dir/.fastallreduce-deps"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[env] installing $pip_args"
  t0=$(date +%s)
  [ "$TORCH_PIN" = "installed" ] || python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  python -m pip install -q $pip_args
  echo "$want" > "$stamp"
  echo "[env] dependencies installed in $(( $(date +%s) - t0 )) s"
fi
if [ "${FASTALLREDUCE_DEPS_ONLY:-0}" = 1 ]; then
  return 0 2>/dev/null || exit 0
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda   # torch would guess /usr/local from the nvcc wrapper
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# pip builds in a fresh temporary directory every time (about 3 minutes here), so skip it when
# nothing that goes into the build changed since the last one: sources, build files, settings.
src_hash=$( (find csrc -type f -print0 | sort -z | xargs -0 sha1sum
             sha1sum setup.py pyproject.toml
             echo "${FASTALLREDUCE_CUDA:-} ${TORCH_CUDA_ARCH_LIST:-} ${CUDA_HOME:-} $want") | sha1sum | cut -d' ' -f1)
build_stamp="$state_dir/.fastallreduce-build"
if [ -f "$build_stamp" ] && [ "$(cat "$build_stamp")" = "$src_hash" ] &&
   python -c "import fastallreduce._C" >/dev/null 2>&1; then
  echo "[env] fastallreduce._C is up to date (no source or build setting changed since the last build)"
else
  t0=$(date +%s)
  echo "[env] building fastallreduce._C against torch $(python -c 'import torch; print(torch.__version__)') (pip install --no-build-isolation -e .)"
  rm -f "$build_stamp"
  python -m pip install -q --no-build-isolation --no-deps -e .
  echo "$src_hash" > "$build_stamp"
  echo "[env] build done in $(( $(date +%s) - t0 )) s"
fi
