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

echo
echo "== provision data health (the AEIMS data layer, on a copy of the project's AEIMS fixtures)"
demo_data=var/demo/aeims
if [ ! -d "$demo_data/data" ]; then
  mkdir -p var/demo
  cp -r tests/fixtures/aeims "$demo_data"
  rm -f "$demo_data/README.md"
fi
PROVISION_DATA_DIR=$demo_data $provision data health

page=var/demo/hello/index.html
echo
echo "Result:"
echo "  page rendered by the run:  $page"
echo "  its row in PostgreSQL:     psql \"\$PROVISION_PG_DSN\" -c 'table demo_greetings'  (after eval \"\$(.venv/bin/provision dev env)\")"
echo "  the journal of runs:       .venv/bin/provision runs list"
echo "  the local stack:           .venv/bin/provision dev status"
