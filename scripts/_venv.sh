# Shared by the scripts: create .venv if needed and install the project (with EXTRAS) into it.
# Reinstalls only when setup.cfg/pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ..." >&2
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.okm-installed${EXTRAS:+-$EXTRAS}"
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing the gateway${EXTRAS:+ with [$EXTRAS]} into .venv ..." >&2
  # pip's notes about this machine's extra package indexes are noise here; real errors still show.
  .venv/bin/python -m pip install --disable-pip-version-check -q -e ".${EXTRAS:+[$EXTRAS]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
fi
