#!/usr/bin/env bash
# Installs Debian's PostgreSQL (when missing), starts its cluster and creates the test role and
# database. Idempotent; prints nothing unless something fails. Needs root.
#
# Afterwards the PostgreSQL tests use:
#     export ENDPOINT_TEST_PG_URL=postgresql://endpoint_test:endpoint_test@127.0.0.1:5432/endpoint_test
# (the role may create databases: each test works in a fresh one of its own).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ROLE=endpoint_test
PASSWORD=endpoint_test
DB=endpoint_test
PORT=5432

quiet() {  # run a command; show its output only if it fails
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "postgres.sh: failed: $*" >&2
        return 1
    fi
}

if ! command -v pg_lsclusters >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    quiet apt-get update -qq
    quiet apt-get install -y -qq --no-install-recommends postgresql
fi

cluster=$(pg_lsclusters --no-header | awk -v port="$PORT" '$3 == port {print $1, $2; exit}')
if [ -z "$cluster" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    quiet pg_createcluster --port "$PORT" "$version" main
    cluster="$version main"
fi
# shellcheck disable=SC2086  # "VERSION NAME" on purpose
if ! pg_lsclusters --no-header | awk -v port="$PORT" '$3 == port && $4 == "online" {found=1} END {exit !found}'; then
    quiet pg_ctlcluster $cluster start
fi

psql_admin() {
    runuser -u postgres -- psql --port "$PORT" -X -q -v ON_ERROR_STOP=1 "$@"
}

# Wait for the server to accept connections (a fresh start may take a moment).
for _ in $(seq 1 50); do
    if psql_admin -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done

quiet psql_admin -d postgres <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
        CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
    ELSE
        ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\gexec
SQL
