#!/usr/bin/env bash
# Creates (once) the cached Python environment used by the fixture generators, and prints its
# python path as the last line. Cache: $LOQUAT_CACHE (default ~/.cache/loquat)/venv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${LOQUAT_CACHE:-$HOME/.cache/loquat}
venv=$cache/venv
stamp=$venv/.requirements.sha256
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "loquat pyenv: installing tools/requirements.txt into $venv (torch is large; this is done once)" >&2
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
    echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
