#!/usr/bin/env bash
# The large-minibatch SGD demo from a fresh machine: sets up .venv, torch and the build as
# scripts/main.sh does, installs Fashion-MNIST (Debian's dataset-fashion-mnist) when it is missing
# and this user can, then runs `python -m fastallreduce demo` with the extra arguments.
# Without the package the demo runs on scikit-learn's digits and says so. `--data` skips the check.
source "$(dirname "$0")/env.sh"
export GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
FMNIST=/usr/share/datasets/fashion-mnist   # fastallreduce.demo.data.FASHION_MNIST_DIR
PKG=dataset-fashion-mnist

wants_default_data=1
for arg in "$@"; do
  case "$arg" in --data|--data=*) wants_default_data=0 ;; esac
done
if [ "$wants_default_data" = 1 ] && [ ! -d "$FMNIST" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[demo] installing $PKG (Fashion-MNIST, about 30 MB)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$PKG" >/dev/null; }; then
      echo "[demo] could not install $PKG"
    fi
  fi
  if [ ! -d "$FMNIST" ]; then
    echo "[demo] Fashion-MNIST not found in $FMNIST (get it with: sudo apt-get install $PKG, or pass --data DIR of IDX files); running on scikit-learn's digits instead"
  fi
fi
python -m fastallreduce demo "$@"
