#!/usr/bin/env bash
# Compiles (syntax only) every csrc/ file against the headers of each supported torch release:
# the support window is what this proves. Minutes, not a build per version: the headers come
# from the wheel alone (cached in .torch-headers/), most files are checked as one translation unit
# (torch's headers parsed once), and the units in parallel.
#   bash scripts/torch_window.sh                 # every version in TORCH_WINDOW below
#   bash scripts/torch_window.sh 2.11.0 2.15.0   # just these
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The latest patch of every minor release from the oldest supported to the newest published.
TORCH_WINDOW="2.11.0 2.12.1 2.13.0 2.14.1 2.15.0"
versions="${*:-$TORCH_WINDOW}"
PY="${PYTHON:-python3}"
CACHE="$ROOT/.torch-headers"
JOBS="${MAX_JOBS:-$(nproc)}"
pyinc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
cuda_inc=""
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [ -n "$d" ] && [ -f "$d/include/cuda_runtime_api.h" ]; then cuda_inc="$d/include"; break; fi
done
# With CUDA headers, the CUDA-path sources are checked too (as the CUDA build compiles them).
defs="-DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H"
[ -n "$cuda_inc" ] && defs="$defs -DFASTALLREDUCE_WITH_CUDA=1"
mapfile -t files < <(find csrc -name '*.cpp' | sort)
mkdir -p "$CACHE"

headers_of() {  # $1 version -> prints the include directory, fetching it once
  local v=$1 dir="$CACHE/$1"
  if [ ! -f "$dir/torch/include/torch/headeronly/version.h" ] && [ ! -f "$dir/torch/include/torch/csrc/api/include/torch/version.h" ]; then
    local tmp
    tmp=$(mktemp -d)
    # PIP_CONSTRAINT=/dev/null: machines here cap pip at the pinned torch; headers of newer ones are
    # wanted. An empty PIP_FIND_LINKS: a local CPU-only wheel (2.13.0+cpu) lacks torch's CUDA headers.
    mkdir -p "$tmp/no-links"
    PIP_CONSTRAINT=/dev/null PIP_FIND_LINKS="$tmp/no-links" "$PY" -m pip download -q --no-deps "torch==$v" \
      -d "$tmp" >"$tmp/log" 2>&1 ||
      { grep -v '^WARNING' "$tmp/log" >&2; rm -rf "$tmp"; return 1; }
    rm -rf "$dir" && mkdir -p "$dir"
    unzip -q "$tmp"/torch-*.whl 'torch/include/*' -d "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir/torch/include"
}

# Translation units: every file whose file-local names are its own in one unit (torch's headers
# are then parsed once per release, not once per file); the bindings (each has its own registrar)
# and the kernels (they share an implementation header of file-local templates) one by one.
units() {  # prints one line per unit: the files it includes
  find csrc -name '*.cpp' -not -path 'csrc/bindings/*' -not -path 'csrc/kernels/*' | sort | tr '\n' ' '
  echo
  find csrc/bindings csrc/kernels -name '*.cpp' | sort
}

check_version() {  # $1 version; prints one table row; returns non-zero on any error
  local v=$1 inc t0 work flags fail=0 i=0 nfiles nfail=0
  t0=$(date +%s)
  inc=$(headers_of "$v") || { printf '%-8s %-6s %s\n' "$v" "FAILED" "could not fetch torch==$v's headers"; return 1; }
  work=$(mktemp -d)
  flags="-std=c++20 -fopenmp -fPIC -fvisibility=hidden $defs -I$ROOT/csrc -I$inc -I$inc/torch/csrc/api/include -I$pyinc"
  [ -n "$cuda_inc" ] && flags="$flags -I$cuda_inc"
  while read -r line; do
    i=$((i + 1))
    for f in $line; do echo "#include \"$ROOT/$f\""; done >"$work/unit$i.cpp"
    echo "$line" >"$work/unit$i.files"
  done < <(units)
  nfiles=$(find csrc -name '*.cpp' | wc -l)
  export FLAGS="$flags" WORK="$work"
  # shellcheck disable=SC2016
  find "$work" -name 'unit*.cpp' | xargs -P "$JOBS" -I{} sh -c 'g++ $FLAGS -fsyntax-only {} 2>{}.err || echo {} >>"$WORK/failed"'
  if [ -s "$work/failed" ]; then
    fail=1
    while read -r u; do
      nfail=$((nfail + $(wc -w <"${u%.cpp}.files")))
      echo "--- torch $v: $(cat "${u%.cpp}.files")" >&2
      grep -E 'error' "$u.err" | head -8 >&2
    done <"$work/failed"
  fi
  printf '%-8s %-6s %3d files in %d units, %d files in failing units, %d s\n' "$v" \
    "$([ $fail = 0 ] && echo ok || echo FAILED)" "$nfiles" "$i" "$nfail" $(( $(date +%s) - t0 ))
  rm -rf "$work"
  return $fail
}

echo "[window] syntax check of csrc/ against torch $versions (CUDA headers: ${cuda_inc:-none})"
rc=0
for v in $versions; do check_version "$v" || rc=1; done
exit $rc
