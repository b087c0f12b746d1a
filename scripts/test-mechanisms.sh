#!/usr/bin/env bash
# Runs tests/mechanisms in a fresh virtual environment that holds only what mechanisms/ needs
# (numpy, scipy, dp-accounting and their dependencies) plus pytest, hypothesis and mpmath (the
# exact references of test_rdp; dp-accounting needs it too), at the versions
# pyproject.toml pins, and the project itself without its dependencies: proof that mechanisms/
# and its tests import no Flask, no torch, nothing of service/, models/ or corpus/.
# Extra arguments go to pytest. The environment is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

venv=$(mktemp -d "${TMPDIR:-/tmp}/privtext-mechanisms-XXXXXX")
trap 'rm -rf "$venv"' EXIT

# The pins of these distributions, read from pyproject.toml (dependencies and the test extra).
mapfile -t pins < <("$PYTHON" - numpy scipy dp-accounting pytest hypothesis mpmath <<'PY'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["test"]
pins = {re.split(r"[=<>!~\[ ;]", r, maxsplit=1)[0].lower(): r for r in requirements}
for name in sys.argv[1:]:
    print(pins[name])
PY
)

"$PYTHON" -m venv "$venv"
"$venv/bin/pip" install --quiet "${pins[@]}"
"$venv/bin/pip" install --quiet --no-deps .
echo "test-mechanisms: $(tr '\n' ' ' < <("$venv/bin/pip" list --format=freeze))"
"$venv/bin/python" -m pytest tests/mechanisms -p no:cacheprovider "$@"
