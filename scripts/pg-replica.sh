#!/usr/bin/env bash
# A PostgreSQL streaming replica on this machine, and its clean-up.
#
#   pg-replica.sh pair DIR PRIMARY_PORT REPLICA_PORT
#       A primary of its own (initdb) and its replica, both in DIR: what each replica test
#       starts, so a test can delay, stop and restart its replica without touching another's.
#   pg-replica.sh attach DIR PRIMARY_PORT REPLICA_PORT
#       A replica, in DIR, of the server already on 127.0.0.1:PRIMARY_PORT (the machine's):
#       what the bench reads from. Adds `host replication all 127.0.0.1/32 trust` to that
#       server's pg_hba.conf when it has no replication line, and reloads it (`down` takes the
#       line out again).
#   pg-replica.sh stop DIR primary|replica
#   pg-replica.sh start DIR primary|replica
#       Stops (fast shutdown) or starts again one of the servers DIR holds: fault tests.
#   pg-replica.sh freeze DIR primary|replica
#   pg-replica.sh thaw DIR primary|replica
#       Suspends (SIGSTOP) or resumes a server and its processes: connections stay open and
#       nothing answers, as when a host hangs or the network drops packets.
#   pg-replica.sh down DIR
#       Stops what DIR holds, drops the replication slot on the primary, removes DIR. Safe to
#       run twice, and on what a killed run left half made.
#
# The replica is fed by pg_basebackup through a physical replication slot created first (under
# write load the primary would otherwise recycle WAL the backup still needs), and streams from
# it afterwards (`-R` writes primary_conninfo and primary_slot_name). A forgotten slot keeps
# WAL on the primary forever: `down` drops it, and `attach`/`pair` call `down` when they fail.
# As root, the servers run as the postgres user (PostgreSQL refuses root).
set -euo pipefail

usage() {
  sed -n '2,20p' "$0" >&2
  exit 2
}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] && command -v pg_ctl >/dev/null; then
  bin=$(dirname "$(command -v pg_ctl)")
fi
[ -n "$bin" ] || { echo "pg-replica: PostgreSQL's server binaries are not installed" >&2; exit 1; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

psql_at() { # PORT SQL
  as_postgres "$bin/psql" -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2"
}

# Every server: on loopback only, its socket in its own directory. `hot_standby_feedback`
# keeps the primary from vacuuming rows a replica query still reads (no "conflict with
# recovery"). A test pair's servers are small and skip fsync (they hold nothing worth keeping);
# an attached replica keeps the settings its primary's copy carries (a replica refuses to start
# with fewer connections than its primary).
start() { # DATA PORT [OPTIONS]
  as_postgres "$bin/pg_ctl" -D "$1" -l "$1/server.log" -w -t 60 start -o \
    "-c port=$2 -c listen_addresses=127.0.0.1 -c unix_socket_directories='$(dirname "$1")' -c ssl=off \
     -c hot_standby_feedback=on -c wal_receiver_status_interval=1s ${3:-}" >/dev/null
}
hba_line="host replication all 127.0.0.1/32 trust # pg-replica.sh"
pair_options="-c max_connections=200 -c shared_buffers=32MB -c fsync=off -c full_page_writes=off"

stop() { # DATA
  if [ -f "$1/postmaster.pid" ]; then
    # A frozen server would never see the stop.
    postmaster=$(head -n 1 "$1/postmaster.pid")
    # shellcheck disable=SC2046
    kill -s CONT "$postmaster" $(pgrep -P "$postmaster") 2>/dev/null || true
    as_postgres "$bin/pg_ctl" -D "$1" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
}

# The replica of the server on PRIMARY_PORT, in DIR/replica, streaming through slot SLOT.
replicate() { # DIR PRIMARY_PORT REPLICA_PORT SLOT [OPTIONS]
  psql_at "$2" "SELECT pg_create_physical_replication_slot('$4')" >/dev/null
  as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$2" -U postgres -D "$1/replica" \
    -R -X stream -S "$4" -c fast
  # A Debian server keeps its configuration outside its data directory: the copy has none.
  [ -f "$1/replica/postgresql.conf" ] || as_postgres touch "$1/replica/postgresql.conf"
  [ -f "$1/replica/pg_hba.conf" ] ||
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' |
    as_postgres tee "$1/replica/pg_hba.conf" >/dev/null
  start "$1/replica" "$3" "${5:-}"
}

prepare() { # DIR PRIMARY_PORT REPLICA_PORT OWNS_PRIMARY OPTIONS HBA_LINE_ADDED_TO
  if [ -e "$1/state" ]; then
    echo "pg-replica: $1 is in use (pg-replica.sh down $1 first)" >&2
    exit 1
  fi
  mkdir -p "$1"
  chmod 755 "$1"
  [ "$(id -u)" = 0 ] && chown postgres: "$1"
  # Slot names: lower case letters, digits and underscores.
  local slot
  slot="replica_$(printf '%s' "$(realpath "$1")" | md5sum | cut -c1-16)"
  printf 'primary_port=%s\nreplica_port=%s\nslot=%s\nowns_primary=%s\noptions="%s"\nhba_added="%s"\n' \
    "$2" "$3" "$slot" "$4" "$5" "${6:-}" >"$1/state"
  echo "$slot"
}

cmd=${1:-}
case "$cmd" in
  pair)
    [ $# -eq 4 ] || usage
    dir=$2 primary_port=$3 replica_port=$4
    slot=$(prepare "$dir" "$primary_port" "$replica_port" yes "$pair_options")
    trap '[ "${made:-}" = yes ] || "$0" down "$dir"' EXIT
    as_postgres "$bin/initdb" -D "$dir/primary" -U postgres --auth=trust -E UTF8 \
      --locale=C.UTF-8 >/dev/null
    start "$dir/primary" "$primary_port" "$pair_options"
    replicate "$dir" "$primary_port" "$replica_port" "$slot" "$pair_options"
    made=yes
    ;;
  attach)
    [ $# -eq 4 ] || usage
    dir=$2 primary_port=$3 replica_port=$4
    hba=$(psql_at "$primary_port" "SHOW hba_file")
    added=
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]' "$hba"; then
      sed -i "1i $hba_line" "$hba"
      psql_at "$primary_port" "SELECT pg_reload_conf()" >/dev/null
      added=$hba
    fi
    slot=$(prepare "$dir" "$primary_port" "$replica_port" no "" "$added")
    trap '[ "${made:-}" = yes ] || "$0" down "$dir"' EXIT
    replicate "$dir" "$primary_port" "$replica_port" "$slot"
    made=yes
    ;;
  freeze | thaw)
    [ $# -eq 3 ] || usage
    dir=$2 server=$3
    case "$server" in primary | replica) ;; *) usage ;; esac
    postmaster=$(head -n 1 "$dir/$server/postmaster.pid")
    signal=STOP
    [ "$cmd" = thaw ] && signal=CONT
    # shellcheck disable=SC2046
    kill -s "$signal" "$postmaster" $(pgrep -P "$postmaster")
    ;;
  stop | start)
    [ $# -eq 3 ] || usage
    dir=$2 server=$3
    # shellcheck source=/dev/null
    . "$dir/state"
    case "$server" in
      primary) [ "$owns_primary" = yes ] || usage; port=$primary_port ;;
      replica) port=$replica_port ;;
      *) usage ;;
    esac
    if [ "$cmd" = stop ]; then
      as_postgres "$bin/pg_ctl" -D "$dir/$server" -m fast -w -t 30 stop >/dev/null
    else
      start "$dir/$server" "$port" "$options"
    fi
    ;;
  down)
    [ $# -eq 2 ] || usage
    dir=$2
    [ -f "$dir/state" ] || { rm -rf "$dir"; exit 0; }
    # shellcheck source=/dev/null
    . "$dir/state"
    stop "$dir/replica"
    if [ "$owns_primary" = no ]; then
      # The slot stays active until the primary's WAL sender notices the replica has gone.
      for _ in $(seq 1 100); do
        left=$(psql_at "$primary_port" "SELECT count(pg_drop_replication_slot(slot_name))
          FILTER (WHERE NOT active) - count(*) FROM pg_replication_slots
          WHERE slot_name = '$slot'") || break
        [ "$left" = 0 ] && break
        sleep 0.1
      done
    fi
    stop "$dir/primary"
    if [ -n "${hba_added:-}" ] && [ -f "$hba_added" ]; then
      sed -i "\|^$hba_line\$|d" "$hba_added"
      psql_at "$primary_port" "SELECT pg_reload_conf()" >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  *)
    usage
    ;;
esac
