#!/usr/bin/env bash
# A real multi-process Grid cluster on loopback: a Redis server for membership, N silo processes
# (the routed experts split into groups spread over them; silo 0 also serves attention) and the gateway.
#
#   deploy/local/cluster.sh up --silos 3 --model DIR --port 8080   # returns once GET /ready answers 200
#   deploy/local/cluster.sh down                                   # stops everything it started
#   deploy/local/cluster.sh status
#
# Options for up: --silos N (3), --model DIR (built-in tiny model), --port P (8080), --redis-port P (6390),
# --attention-silos K (1: silos 0..K-1 host attention shards), --max-groups M (device-limited routing, 0 = off),
# --elastic N (0: N more silos, elastic0.., started with --elastic true and no attention or groups: they take on any
# expert group whose silos are all gone, loading it on demand),
# --no-build (use existing builds; GRID_BUILD_CONFIG picks Debug or Release), --timeout S (180),
# --base-port P (21000: silo i listens on P+i, its client gateway on P+100+i),
# --metrics-port P (9464: silo i serves Prometheus metrics on P+i; 0 = off), --quantization none|int8|fp8 (linear weights in
# 8 bits on every silo and the gateway; Grid:Model:Quantization), --kv-cache-dtype auto|int8|fp8 (the latent cache; Grid:Silo:KvCacheDtype). State and logs: $GRID_CLUSTER_DIR (.grid/cluster).
# The gateway starts with its debug endpoints on (/debug/cache, /debug/steps: Grid__Http__DebugEndpoints=true unless set).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
state="${GRID_CLUSTER_DIR:-$root/.grid/cluster}"
config="${GRID_BUILD_CONFIG:-Debug}"

die() { echo "cluster.sh: $*" >&2; exit 2; }

stop_all() {
  [ -d "$state" ] || return 0
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
  done
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

cmd="${1:-}"; shift || true
case "$cmd" in
  down)
    stop_all
    echo "cluster down"
    exit 0 ;;
  status)
    [ -d "$state" ] || { echo "no cluster"; exit 0; }
    for f in "$state"/*.pid; do [ -e "$f" ] || continue; n=$(basename "$f" .pid); pid=$(cat "$f"); if kill -0 "$pid" 2>/dev/null; then echo "$n: running (pid $pid)"; else echo "$n: dead"; fi; done
    exit 0 ;;
  up) ;;
  *) die "usage: cluster.sh up [--silos N] [--elastic N] [--model DIR] [--port P] | down | status" ;;
esac

silos=3; model=""; port=8080; redis_port=6390; attention_silos=1; max_groups=0; build=1; timeout=180; base_port=21000; metrics_port=9464; elastic=0; quantization=""; kv_cache_dtype=""
while [ $# -gt 0 ]; do
  case "$1" in
    --silos) silos="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --redis-port) redis_port="$2"; shift 2 ;;
    --attention-silos) attention_silos="$2"; shift 2 ;;
    --max-groups) max_groups="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    --base-port) base_port="$2"; shift 2 ;;
    --metrics-port) metrics_port="$2"; shift 2 ;;
    --elastic) elastic="$2"; shift 2 ;;
    --quantization) quantization="$2"; shift 2 ;;
    --kv-cache-dtype) kv_cache_dtype="$2"; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
[[ "$silos" =~ ^[1-9][0-9]*$ ]] || die "--silos must be a positive integer"
[[ "$attention_silos" =~ ^[1-9][0-9]*$ ]] && [ "$attention_silos" -le "$silos" ] || die "--attention-silos must be in 1..$silos"
[[ "$elastic" =~ ^[0-9]+$ ]] || die "--elastic must be a non-negative integer"
[ $((silos + elastic)) -le 100 ] || die "--silos plus --elastic must be at most 100 (client gateway ports are base+100+i)"
case "$quantization" in ""|none|int8|fp8) ;; *) die "--quantization must be none, int8 or fp8 (got '$quantization')" ;; esac
case "$kv_cache_dtype" in ""|auto|int8|fp8) ;; *) die "--kv-cache-dtype must be auto, int8 or fp8 (got '$kv_cache_dtype')" ;; esac
# Every process (silos and gateway) reads the same settings from the environment.
[ -n "$quantization" ] && export Grid__Model__Quantization="$quantization"
[ -n "$kv_cache_dtype" ] && export Grid__Silo__KvCacheDtype="$kv_cache_dtype"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

stop_all
mkdir -p "$state"
rm -f "$state"/*.log

if [ "$build" = 1 ]; then
  echo "building (dotnet build -c $config)"
  dotnet build "$root/silos/Grid.Silos.csproj" -c "$config" -v q -nologo >/dev/null
  dotnet build "$root/gateway/Grid.Gateway.csproj" -c "$config" -v q -nologo >/dev/null
fi
silo_dll="$root/silos/bin/$config/net10.0/grid-silo.dll"
grid_dll="$root/gateway/bin/$config/net10.0/grid.dll"
[ -f "$silo_dll" ] && [ -f "$grid_dll" ] || die "build outputs missing ($silo_dll, $grid_dll)"

if [ -z "$model" ]; then
  # The built-in tiny checkpoint (written on first use by the grid CLI).
  model="$(dotnet "$grid_dll" model-path)"
fi
[ -f "$model/config.json" ] || die "no config.json in $model"
model="$(cd "$model" && pwd)"

# Expert groups: the smallest divisor of n_routed_experts that is >= the number of silos.
experts=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('n_routed_experts') or 0)" "$model/config.json" 2>/dev/null \
  || grep -o '"n_routed_experts": *[0-9]*' "$model/config.json" | grep -o '[0-9]*$')
groups=1
if [ "$experts" -gt 0 ]; then
  groups=$silos
  while [ $((experts % groups)) -ne 0 ]; do groups=$((groups + 1)); done
fi

echo "starting redis on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$state/redis.pid.tmp" --logfile "$state/redis.log" >/dev/null
for _ in $(seq 1 50); do [ -s "$state/redis.pid.tmp" ] && break; sleep 0.1; done
mv "$state/redis.pid.tmp" "$state/redis.pid"
redis-cli -p "$redis_port" FLUSHALL >/dev/null 2>&1 || true

cluster_id="grid-local-$$"
# Share the cores: expert-only silos split them (one thread each when silos outnumber them); attention silos split them
# among themselves only, since their work (attention, dense layers, shared experts, sampling) is on every layer's
# critical path while the expert-only silos compute only when an attention silo waits for them. No OpenMP spin-waiting.
threads=$(( $(nproc) / (silos + elastic) )); [ "$threads" -lt 1 ] && threads=1
attention_threads=$(( $(nproc) / attention_silos )); [ "$attention_threads" -lt 1 ] && attention_threads=1
for i in $(seq 0 $((silos - 1))); do
  mine=""
  for g in $(seq 0 $((groups - 1))); do
    [ $((g % silos)) -eq "$i" ] && mine="${mine:+$mine,}$g"
  done
  attention=false; [ "$i" -lt "$attention_silos" ] && attention=true
  echo "silo $i: attention=$attention expert groups [$mine] of $groups"
  t=$threads; [ "$attention" = true ] && t=$attention_threads
  OMP_WAIT_POLICY=PASSIVE Grid__Cluster__ClusterId="$cluster_id" nohup dotnet "$silo_dll" --torch-threads "$t" --model "$model" --groups "$mine" --expert-groups "$groups" \
    --attention "$attention" --clustering redis --redis "127.0.0.1:$redis_port" \
    --silo-port $((base_port + i)) --gateway-port $((base_port + 100 + i)) \
    --metrics-port $([ "$metrics_port" -gt 0 ] && echo $((metrics_port + i)) || echo 0) > "$state/silo$i.log" 2>&1 &
  echo $! > "$state/silo$i.pid"
done
# Elastic silos: no attention, no declared groups; ports and metrics continue after the silos'.
for j in $(seq 0 $((elastic - 1))); do
  i=$((silos + j))
  echo "elastic$j: attention=false expert groups [] of $groups, elastic (loads a group when placement falls back to it)"
  OMP_WAIT_POLICY=PASSIVE Grid__Cluster__ClusterId="$cluster_id" nohup dotnet "$silo_dll" --torch-threads "$threads" --model "$model" --groups "" --expert-groups "$groups" \
    --attention false --elastic true --clustering redis --redis "127.0.0.1:$redis_port" \
    --silo-port $((base_port + i)) --gateway-port $((base_port + 100 + i)) \
    --metrics-port $([ "$metrics_port" -gt 0 ] && echo $((metrics_port + i)) || echo 0) > "$state/elastic$j.log" 2>&1 &
  echo $! > "$state/elastic$j.pid"
done

echo "starting the gateway on http://127.0.0.1:$port"
Grid__Cluster__Clustering=redis Grid__Cluster__Redis="127.0.0.1:$redis_port" Grid__Cluster__ClusterId="$cluster_id" \
Grid__Cluster__ExpertGroups="$groups" Grid__Cluster__AttentionShards="$attention_silos" Grid__Cluster__MaxGroupsPerToken="$max_groups" \
  Grid__Http__DebugEndpoints="${Grid__Http__DebugEndpoints:-true}" \
  nohup dotnet "$grid_dll" serve --model "$model" --port "$port" > "$state/gateway.log" 2>&1 &
echo $! > "$state/gateway.pid"
cat > "$state/env" <<ENV
export Grid__Cluster__Clustering=redis Grid__Cluster__Redis=127.0.0.1:$redis_port Grid__Cluster__ClusterId=$cluster_id Grid__Cluster__ExpertGroups=$groups Grid__Cluster__AttentionShards=$attention_silos Grid__Cluster__MaxGroupsPerToken=$max_groups
ENV

deadline=$((SECONDS + timeout))
until curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do
  for f in "$state"/*.pid; do
    pid=$(cat "$f")
    if ! kill -0 "$pid" 2>/dev/null; then
      n=$(basename "$f" .pid)
      echo "cluster.sh: $n exited; last log lines:" >&2
      tail -n 20 "$state/$n.log" >&2 || true
      stop_all
      exit 1
    fi
  done
  if [ $SECONDS -ge $deadline ]; then
    echo "cluster.sh: not ready after ${timeout}s; see $state/*.log" >&2
    stop_all
    exit 1
  fi
  sleep 0.5
done
echo "cluster ready: http://127.0.0.1:$port (silos: $silos, elastic silos: $elastic, expert groups: $groups, logs: $state)"
