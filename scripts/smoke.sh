#!/usr/bin/env bash
# CI's smoke run, as a new user would do it: on the local stack, create a fresh site end to
# end through the CLI, fetch it over verified HTTPS with curl (pebble's root as the only trust
# anchor), destroy it, and check that nothing is left: no record, vhost, site folder,
# certificate, DNS record or billing registration. Exits non-zero on the first problem.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s.%N)
provision=.venv/bin/provision
say() { printf '[smoke] %s\n' "$*"; }
die() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }

$provision dev up >/dev/null
eval "$($provision dev env)"

# A private copy of the AEIMS fixtures and a certificate folder of its own (its ACME account
# and rate-limit ledger), so the run depends on nothing a test left behind.
run=smoke-$(date +%Y%m%d%H%M%S)-$$
work=var/smoke/$run
mkdir -p "$work"
cp -r tests/fixtures/aeims "$work/aeims"
export PROVISION_DATA_DIR=$PWD/$work/aeims PROVISION_CERT_DIR=$PWD/$work/certs
domain=$run.newflirts.com
site_id=${domain//./_}
name="Smoke Flirts"
port=$PROVISION_NGINX_HTTPS_PORT

say "provision site create --domain $domain"
$provision site create --domain "$domain" --name "$name" --type customer --template default

say "curl https://$domain:$port/ (verified against pebble's root: $PROVISION_ACME_ISSUER_ROOT)"
page=$(curl -sS --fail --cacert "$PROVISION_ACME_ISSUER_ROOT" \
  --resolve "$domain:$port:127.0.0.1" "https://$domain:$port/")
grep -q "$name" <<<"$page" || die "the page does not name the site: ${page:0:200}"

say "provision site destroy --site $site_id"
$provision site destroy --site "$site_id" --yes

say "checking that nothing is left"
left=()
set +e
$provision site status --site "$site_id" >/dev/null 2>&1
status_rc=$?
set -e
[ "$status_rc" -eq 4 ] || left+=("the registry still has $site_id (site status exit $status_rc)")
for path in "$PROVISION_SITES_ROOT/$domain" \
  "$PROVISION_NGINX_VHOST_DIR/$domain.conf" "$PROVISION_NGINX_ENABLED_DIR/$domain.conf" \
  "$PROVISION_CERT_DIR/live/$domain" "$PROVISION_CERT_DIR/archive/$domain" \
  "$PROVISION_CERT_DIR/renewal/$domain.conf"; do
  if [ -e "$path" ] || [ -L "$path" ]; then left+=("$path"); fi
done
code=$(curl -sS -o /dev/null -w '%{http_code}' -H @- \
  "$PROVISION_BILLING_URL/v1/sites/$site_id" <<<"Authorization: Bearer $PROVISION_BILLING_TOKEN")
[ "$code" = 404 ] || left+=("the billing registration of $site_id (GET answered $code)")
records=$(.venv/bin/python - "$domain" <<'PY'
import sys

import boto3

domain = sys.argv[1]
client = boto3.client("route53", endpoint_url=__import__("os").environ["PROVISION_AWS_ENDPOINT"])
for zone in client.list_hosted_zones()["HostedZones"]:
    for rrset in client.list_resource_record_sets(HostedZoneId=zone["Id"])["ResourceRecordSets"]:
        if rrset["Name"].rstrip(".").endswith(domain):
            print(rrset["Name"], rrset["Type"])
PY
)
[ -z "$records" ] || left+=("DNS records: $records")
https=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$PROVISION_ACME_ISSUER_ROOT" \
  --resolve "$domain:$port:127.0.0.1" "https://$domain:$port/" 2>/dev/null || true)
[ "$https" != 200 ] || left+=("https://$domain:$port/ still answers 200")
if ((${#left[@]})); then
  printf '[smoke] left behind: %s\n' "${left[@]}" >&2
  exit 1
fi

# What destroy keeps on purpose (the archived folder, the journal) is this run's to clean.
rm -rf "$PROVISION_SITES_ROOT/_archived/${domain}_"* "$work"
elapsed=$(.venv/bin/python -c 'import sys; print(f"{float(sys.argv[1]) - float(sys.argv[2]):.1f}")' \
  "$(date +%s.%N)" "$started")
say "passed in ${elapsed} s: created, served over verified HTTPS, destroyed, nothing left"
