#!/usr/bin/env bash
# Runs the README's tour: every ```bash block right after a `<!-- tour -->` line, in the order
# of README.md, in one bash that stops at the first failing command (the tour's curl calls
# use --fail-with-body, so any 4xx or 5xx fails it). The README is the script: nothing here
# repeats its commands, so the two cannot drift apart.
#
#   bash scripts/tour.sh                 # from the repository root, against `make run`
#   PRIVTEXT_TOUR_URL=127.0.0.1:8123 bash scripts/tour.sh   # another address (replaces localhost:8000)
#   bash scripts/tour.sh --print         # print the script instead of running it
#
# Blocks marked `<!-- tour: NAME -->` run only when NAME is listed in PRIVTEXT_TOUR_BLOCKS
# (space-separated). The commands run in the current directory, which must hold
# data/admin-key.txt and .venv/bin/privtext, as after `make run`.
# tests/service/test_tour.py runs this against the setup `make run` makes.
set -euo pipefail
readme=${PRIVTEXT_TOUR_README:-$(dirname "$0")/../README.md}
url=${PRIVTEXT_TOUR_URL:-localhost:8000}

script=$(awk -v want=" ${PRIVTEXT_TOUR_BLOCKS:-} " '
  /^<!-- tour(: [a-z-]+)? -->$/ {
    name = $0; sub(/^<!-- tour:? ?/, "", name); sub(/ ?-->$/, "", name)
    pending = (name == "" || index(want, " " name " ") > 0); next
  }
  pending && /^```bash$/ { inside = 1; pending = 0; next }
  inside && /^```$/ { inside = 0; print ""; next }
  inside { print; next }
  { pending = 0 }
' "$readme")
script=${script//localhost:8000/$url}
if [ -z "$script" ]; then
  echo "tour.sh: no tour blocks found in $readme" >&2
  exit 1
fi
if [ "${1:-}" = "--print" ]; then
  printf '%s\n' "$script"
  exit 0
fi
exec bash -euo pipefail -c "$script"
