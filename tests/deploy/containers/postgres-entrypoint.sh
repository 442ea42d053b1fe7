#!/bin/sh
# The public postgres image's contract, for Debian's PostgreSQL: on an empty PGDATA, make the cluster
# with POSTGRES_USER and POSTGRES_PASSWORD and create POSTGRES_DB; then serve on PGPORT (5432 unless set).
set -eu
: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  "$bin/initdb" --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --encoding=UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  "$bin/pg_ctl" --pgdata="$PGDATA" --options="-c listen_addresses='' -k /var/run/postgresql" --wait start >/dev/null
  "$bin/psql" --host=/var/run/postgresql --username="$POSTGRES_USER" --dbname=postgres --quiet \
    --command="CREATE DATABASE \"$POSTGRES_DB\""
  "$bin/pg_ctl" --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -k /var/run/postgresql -p "${PGPORT:-5432}"
