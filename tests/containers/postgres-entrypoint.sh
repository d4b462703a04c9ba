#!/bin/sh
# What the postgres image's entrypoint does with POSTGRES_USER, POSTGRES_PASSWORD and
# POSTGRES_DB on a first start, with Debian's PostgreSQL (tests/containers/services.Dockerfile).
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
export PATH="$bin:$PATH" PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb --username="$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-local=trust \
    --encoding=UTF8 --locale=C.UTF-8 \
    --auth-host=scram-sha-256 >/dev/null
  rm /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
  createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  pg_ctl -w stop >/dev/null
fi
exec postgres -c listen_addresses='*'
