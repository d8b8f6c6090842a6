# Sourced by scripts/*: create or reuse .venv and install the project into it, with the
# extras in EXTRAS (default: tests). Installs only when pyproject.toml changed since the
# last install, or when these extras were not installed yet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  for cand in python3.13 python3.12 python3.11; do
    if command -v "$cand" >/dev/null; then PY="$cand"; break; fi
  done
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
project="$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
stamp="$VENV/.installed-$project-${EXTRAS:-tests}"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[${EXTRAS:-tests}]"
  # Stamps of an older pyproject.toml go; other extras of this one stay installed.
  find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$project-*" -delete
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
# Numba's on-disk cache of compiled kernels, shared by every process of this checkout.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$ROOT/.venv/numba-cache}"
cd "$ROOT"
