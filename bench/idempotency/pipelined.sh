#!/bin/sh
# Prints FILE's one statement eight times in one pgbench pipeline, as the service sends
# statements on a connection, each copy with variables of its own (:n, :r, :k as :n0 .. :k7).
#   pgbench -n -M prepared -c 8 -j 2 -T 8 -f <(bench/idempotency/pipelined.sh FILE) DB
set -eu
statement=$(grep -v '^--' "$1")
for i in 0 1 2 3 4 5 6 7; do
    printf '\\set n%s random(1, 100000)\n' "$i"
    printf '\\set r%s random(1, 1000000000000)\n' "$i"
    printf '\\set k%s random(1, 9000000000000000000)\n' "$i"
done
printf '%s\n' '\startpipeline'
for i in 0 1 2 3 4 5 6 7; do
    printf '%s\n' "$statement" | sed "s/:n\b/:n$i/g; s/:r\b/:r$i/g; s/:k\b/:k$i/g"
done
printf '%s\n' '\endpipeline'
