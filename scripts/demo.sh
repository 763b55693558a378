#!/usr/bin/env bash
# The demo: the main job end to end on the local stack, then where to look at the result.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(.venv/bin/provision dev env)"
provision=.venv/bin/provision

echo "== provision demo --plan (what would change; nothing is changed)"
$provision demo --plan
echo
echo "== provision demo (applies, journaled, under a lock)"
$provision demo
echo
echo "== provision demo again (already converged: no change)"
$provision demo
echo
echo "== provision runs list"
$provision runs list --limit 5
