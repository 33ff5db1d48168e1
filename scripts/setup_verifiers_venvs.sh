#!/usr/bin/env bash
# Create the two verifiers virtual environments the environment's tests (and anyone) use:
#   .venvs/vf04   verifiers 0.4 (v1: vf-eval kv-cache-eviction ...)
#   .venvs/vf031  verifiers 0.3.1 (v0: the classic vf-eval, load_environment)
# each with the core (kv-cache-rl) and the environment (environments/kv_cache_eviction)
# installed editable. Idempotent: an existing venv is only brought up to date.
# Needs uv (on PATH, or the one `make setup` puts in .venv/bin) and the package index.
# Env: UV (uv binary), PYTHON (interpreter for the venvs, default python3), VF_VENVS (which,
# default "vf04 vf031").
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || true)}
[ -n "$UV" ] || { [ -x .venv/bin/uv ] && UV=.venv/bin/uv; } || true
if [ -z "$UV" ]; then
    echo "setup_verifiers_venvs: uv not found (pip install uv, or make setup)" >&2
    exit 1
fi
PY=${PYTHON:-python3}
start=$(date +%s)
for name in ${VF_VENVS:-vf04 vf031}; do
    case $name in
        vf04) spec='verifiers>=0.4,<0.5' ;;
        vf031) spec='verifiers==0.3.1' ;;
        *) echo "unknown venv $name" >&2; exit 1 ;;
    esac
    venv=.venvs/$name
    [ -x "$venv/bin/python" ] || "$UV" venv -q -p "$PY" "$venv"
    "$UV" pip install -q -p "$venv" "$spec" -e . -e environments/kv_cache_eviction
    echo "setup_verifiers_venvs: $venv ready ($("$venv/bin/python" -c \
        'import importlib.metadata as m; print("verifiers", m.version("verifiers"))'))"
done
echo "setup_verifiers_venvs: done in $(( $(date +%s) - start )) s"
