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
demo_data=var/demo/aeims
if [ ! -d "$demo_data/data" ]; then
  mkdir -p var/demo
  cp -r tests/fixtures/aeims "$demo_data"
  rm -f "$demo_data/README.md"
fi
export PROVISION_DATA_DIR=$demo_data
domain=newflirts.com

echo "== provision site create --plan (the headline job: what would change)"
$provision site create --domain "$domain" --name "New Flirts" --type customer --template default --plan >/dev/null
echo "(plan printed nothing changed; run it yourself to see the vhost diff)"
echo
echo "== provision site create (record, files, nginx, DNS, certificate, operators, billing, HTTPS)"
$provision site create --domain "$domain" --name "New Flirts" --type customer --template default
echo
echo "== provision runs list"
$provision runs list --limit 5

echo
echo "== provision data health (the AEIMS data layer, on a copy of the project's AEIMS fixtures)"
$provision data health

page=var/demo/hello/index.html
https_port=$PROVISION_NGINX_HTTPS_PORT
echo
echo "The new site over verified HTTPS (pebble's issuing root, the stack's nginx on $https_port):"
echo "  curl --cacert $PROVISION_ACME_ISSUER_ROOT --resolve $domain:$https_port:127.0.0.1 https://$domain:$https_port/"
curl -sS --cacert "$PROVISION_ACME_ISSUER_ROOT" --resolve "$domain:$https_port:127.0.0.1" \
  "https://$domain:$https_port/" | grep -o '<title>[^<]*</title>' || true
echo
shots=var/screenshots
mkdir -p "$shots"
echo "== provision site status --screenshot (the page in headless Chromium, verified HTTPS, 1280 and 390 px)"
$provision site status --site "$domain" --screenshot "$shots/$domain.png" || echo "(site status exited $?)"
echo
echo "Result:"
echo "  the site's files:          $PROVISION_SITES_ROOT/$domain/"
echo "  its vhost:                 $PROVISION_NGINX_VHOST_DIR/$domain.conf"
echo "  its certificate:           $PROVISION_CERT_DIR/live/$domain/"
echo "  what its visitors see:     $shots/$domain.png (1280 px), $shots/$domain-390px.png (390 px)"
echo "  the demo page of the run:  $page"
echo "  its row in PostgreSQL:     psql \"\$PROVISION_PG_DSN\" -c 'table demo_greetings'  (after eval \"\$(.venv/bin/provision dev env)\")"
echo "  the journal of runs:       .venv/bin/provision runs list"
echo "  the local stack:           .venv/bin/provision dev status"
