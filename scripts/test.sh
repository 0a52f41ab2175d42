#!/usr/bin/env bash
# Runs the test suite from a fresh machine: sets up .venv, torch, the build, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k ring).
source "$(dirname "$0")/env.sh"
export GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
t0=$(date +%s)
set +e
python -m pytest -q "$@"
rc=$?
echo "[test] pytest finished in $(( $(date +%s) - t0 )) s with exit code $rc"
exit $rc
