#!/usr/bin/env bash
# Measures how long a cluster started by cluster.sh takes to declare a kill -9'd silo Dead in the membership table.
#
#   deploy/local/detect.sh [--silo I] [--trials N]
#
# Each trial: kill -9 silo I, poll its Redis membership row every 50 ms until its status is Dead (6) and print the
# seconds that took, then start the silo again with its own command line and environment and wait until its new
# generation is Active. Needs a cluster from `cluster.sh up` in $GRID_CLUSTER_DIR (.grid/cluster) and redis-cli.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
state="${GRID_CLUSTER_DIR:-$root/.grid/cluster}"
silo=2; trials=1
while [ $# -gt 0 ]; do
  case "$1" in
    --silo) silo="$2"; shift 2 ;;
    --trials) trials="$2"; shift 2 ;;
    *) echo "detect.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
redis_port=$(sed -n 's/.*Grid__Cluster__Redis=[^:]*:\([0-9]*\).*/\1/p' "$state/env")
now() { date +%s.%N; }
status_of() {  # status_of ADDRESS_PREFIX -> the Status of the newest row whose field starts with it
  local key; key=$(redis-cli -p "$redis_port" --raw KEYS '*/members/*' | head -1)
  redis-cli -p "$redis_port" --raw HGETALL "$key" | awk -v p="S$1:" 'f { print; f = 0 } index($0, p) == 1 { f = 1 }' \
    | sed -n 's/^[^@]*@\([0-9]*\)"},"Status":\([0-9]*\).*/\1 \2/p' | sort -n | tail -1 | cut -d' ' -f2
}
for t in $(seq 1 "$trials"); do
  pid=$(cat "$state/silo$silo.pid")
  port=$(tr '\0' '\n' < "/proc/$pid/cmdline" | awk 'f { print; exit } $0 == "--silo-port" { f = 1 }')
  mapfile -d '' cmd < "/proc/$pid/cmdline"
  mapfile -d '' env < "/proc/$pid/environ"
  [ "$(status_of "127.0.0.1:$port")" = 3 ] || { echo "silo $silo is not Active" >&2; exit 1; }
  start=$(now)
  kill -9 "$pid"
  until [ "$(status_of "127.0.0.1:$port")" = 6 ]; do sleep 0.05; done
  echo "trial $t: silo $silo (port $port) declared Dead after $(echo "scale=2; ($(now) - $start) / 1" | bc) s"
  # Start it again (same command line and environment) and wait for its new generation to be Active.
  env -i "${env[@]}" nohup "${cmd[@]}" >> "$state/silo$silo.log" 2>&1 &
  echo $! > "$state/silo$silo.pid"; disown
  for _ in $(seq 1 1200); do [ "$(status_of "127.0.0.1:$port")" = 3 ] && break; sleep 0.25; done
  sleep 2
done
