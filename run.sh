#!/usr/bin/env bash
# One entry point: bootstraps the environment, then dispatches to a competition, the tests or a benchmark.
#   ./run.sh whales train [key=value ...]     ./run.sh test [pytest args]     ./run.sh help
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

usage() {
  cat <<'USAGE'
usage:
  ./run.sh test [pytest args]                       run the test suite (e.g. ./run.sh test -k metrics)
  ./run.sh <competition> <command> [key=value ...]  competitions: whales | happywhale | landmarks | deepfake
      commands: demo-data [DIR] | train | predict run.name=NAME [images=DIR] | embed | export | report
                | pretrain | download | submit | kernel | runs
      deepfake also: detect (cache face crops once)
  ./run.sh bench <train|heads|pretrain|retrieval|deepfake|oneshot|reid>
  ./run.sh doctor                                   what this machine can do for the toolkit
  ./run.sh help
examples:
  ./run.sh whales train                       # real data from inputs/humpback-whale-identification/, else demo data
  ./run.sh whales train preset=smoke          # a tiny run (about a minute)
  ./run.sh whales predict run.name=NAME data.root=DIR out=sub.csv
USAGE
}

in_kaggle() { [ -n "${KAGGLE_KERNEL_RUN_TYPE:-}" ] || [ -d "${KAGGLE_ROOT:-/kaggle}/input" ]; }

# The environment: Kaggle's preinstalled Python inside a kernel, else .venv built from requirements.txt.
setup_python() {
  if in_kaggle; then PY=${PYTHON:-python3}; return; fi
  local venv=.venv stamp=.venv/.requirements.sha
  local want; want=$(cat requirements.txt requirements-dev.txt requirements-nodeps.txt 2>/dev/null | sha1sum | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Setting up $venv from requirements.txt (first run only; a few minutes) ..." >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -r requirements.txt -r requirements-dev.txt >&2
    # packages whose pins would pull torch back, installed without their dependencies
    [ ! -f requirements-nodeps.txt ] || "$venv/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt >&2
    echo "$want" > "$stamp"
  fi
  PY=$venv/bin/python
}

cmd=${1:-help}
case "$cmd" in
  help|-h|--help) usage; exit 2 ;;
  test)
    shift; setup_python
    exec "$PY" -m pytest tests "$@" ;;
  bench)
    shift; setup_python
    exec "$PY" -m bench "$@" ;;
  doctor)
    setup_python
    exec "$PY" -m competitions.doctor ;;
  whales|happywhale|landmarks|deepfake)
    shift
    if [ $# -eq 0 ]; then usage; exit 2; fi
    setup_python
    exec "$PY" -m "competitions.$cmd" "$@" ;;
  *)
    echo "unknown command '$cmd'" >&2; usage; exit 2 ;;
esac
