#!/usr/bin/env bash
# The oldest supported torch (2.11.0, what the lent GPU machine has), in its own venv: builds the
# extension against it and runs the tests that touch torch's C++ APIs (the backend, the DDP hooks,
# registered buffers, the engine's smoke tests, the CUDA-path plumbing that runs without a GPU),
# then the GPU check's rehearsal (--dry-run). Python 3.12 where it exists, as on the GPU machine
# (and its extension file then differs from the pinned venv's 3.11 one, so both builds stay).
# Extra arguments go to pytest; --deps-only only installs the venv (CI overlaps it with other work).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  for c in python3.12 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1); do
    if "$c" -c "import venv, ensurepip" >/dev/null 2>&1; then PYTHON=$c; break; fi
  done
fi
export PYTHON FASTALLREDUCE_TORCH="${FASTALLREDUCE_OLDEST_TORCH:-torch==2.11.0}" FASTALLREDUCE_VENV=.venv-oldest
# The CPU sources only: the CUDA-path .cpp files are compiled against this torch's headers by
# scripts/torch_window.sh, and the .cu files include no torch header.
export FASTALLREDUCE_CUDA=0
if [ "${1:-}" = "--deps-only" ]; then
  FASTALLREDUCE_DEPS_ONLY=1 source scripts/env.sh
  exit 0
fi
source scripts/env.sh
export GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "[oldest] $(python -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")')"
t0=$(date +%s)
set +e
python -m pytest -q tests/test_quick.py tests/test_backend.py tests/test_ddp.py tests/test_registered.py \
  tests/test_cuda_path.py "$@"
rc=$?
set -e
echo "[oldest] pytest finished in $(( $(date +%s) - t0 )) s with exit code $rc"
[ $rc = 0 ] || exit $rc
echo "[oldest] python -m fastallreduce info:"
python -m fastallreduce info
echo "[oldest] the GPU check's rehearsal:"
python -m fastallreduce.gpu_check --dry-run
