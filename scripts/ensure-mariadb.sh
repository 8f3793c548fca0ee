#!/usr/bin/env bash
# Make sure a MariaDB server binary exists; the project starts its own private instance.
set -euo pipefail
if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "mariadbd not found: installing mariadb-server with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
  exit 0
fi
echo "error: mariadbd (MariaDB server) is not installed; install it with 'sudo apt-get install -y mariadb-server' (or your OS's MariaDB 10.6+ package) and run this again" >&2
exit 1
