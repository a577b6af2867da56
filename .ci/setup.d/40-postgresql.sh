#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, pg_ctl) for the tracking-server tests, which start a
# throwaway cluster of their own on a free loopback port (ready_for_mlflow/servers.py).
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
# As root the tests run the cluster as the `postgres` user, with runuser (util-linux).
command -v runuser >/dev/null || { echo "ci: runuser (util-linux) is missing" >&2; exit 1; }
