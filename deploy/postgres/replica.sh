#!/bin/sh
# The `scale` profile's streaming replica: on its first start (an empty volume) a base backup of
# the primary, then a hot standby streaming from it (`-R` writes primary_conninfo). No
# replication slot: a slot forgotten when the profile stops would keep WAL on the primary
# forever; the primary keeps `wal_keep_size` of WAL instead, and a replica that falls further
# behind than that is rebuilt by removing its volume (docs/scaling.md).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -q -h postgres -U "$PGUSER"; do sleep 1; done
  pg_basebackup -h postgres -U "$PGUSER" -D "$PGDATA" -R -X stream -c fast
  chmod 700 "$PGDATA"
fi
# A hot standby needs at least the primary's max_connections; the rest is the primary's tuning.
exec postgres \
  -c hba_file=/etc/postgresql/pg_hba.conf \
  -c hot_standby=on \
  -c hot_standby_feedback=on \
  -c max_connections=200 \
  -c shared_buffers=256MB \
  -c effective_cache_size=1GB \
  -c work_mem=4MB \
  -c random_page_cost=1.1 \
  -c effective_io_concurrency=200
