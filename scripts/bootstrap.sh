# Sourced by the other scripts: make .venv with torch pinned first, then convslim and its test
# extras; redone only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.convslim-installed"
if [ ! -x "$PY" ]; then
  echo "creating $VENV" >&2
  python3 -m venv "$VENV"
fi
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  "$PY" -m pip install -q --upgrade pip >&2
  # torch first and pinned: any other spec pulls a multi-GB CUDA build
  "$PY" -m pip install -q torch==2.13.0 >&2
  "$PY" -m pip install -q -e "$ROOT[test]" >&2
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
