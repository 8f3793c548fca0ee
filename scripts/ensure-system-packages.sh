#!/usr/bin/env bash
# Make sure the system programs the project runs for real exist: the MariaDB and PostgreSQL
# servers (the project starts its own private instances) and Prometheus with promtool (the
# metrics scrape tests).
set -euo pipefail
missing=()
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  missing+=(mariadb-server)
fi
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  missing+=(prometheus)
fi
# patchelf relinks the newer servers unpacked from Debian sid (cdc_scorer/local/sid_dist.py).
if ! command -v patchelf >/dev/null 2>&1; then
  missing+=(patchelf)
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packages start a system Prometheus on :9090 and a PostgreSQL cluster on :5432; the
  # tests start their own.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    (service prometheus stop || pkill -x prometheus || true) >/dev/null 2>&1
  fi
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    (service postgresql stop || true) >/dev/null 2>&1
  fi
  exit 0
fi
echo "error: missing ${missing[*]}; install with 'sudo apt-get install -y ${missing[*]}' (MariaDB 10.6+, PostgreSQL 15+, Prometheus 2.x, patchelf) and run this again" >&2
exit 1
