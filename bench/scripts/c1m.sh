#!/usr/bin/env bash
# The C1M run: a million logged-in connections held for 60 s on this one
# host. Starts its own redis-server, one logic shim and a gateway
# supervisor with enough worker processes to stay under the 20,000-files
# limit per process; `tidegate bench idle` spreads the clients over ~53
# bench processes and 84 loopback source addresses. Everything it starts is
# stopped on exit. Needs ~16 GiB free; takes ~8-10 minutes on 2 cores.
#
#   bench/scripts/c1m.sh [CONNECTIONS] [OUT.json]
#   RATE=2200 bench/scripts/c1m.sh ...          logins per second (open loop)
#   SCENARIO=broadcast bench/scripts/c1m.sh ... broadcast to all N instead of idle
#   SCENARIO=connect bench/scripts/c1m.sh ...   the connect+login storm alone
#   SCENARIO=c2s bench/scripts/c1m.sh ...       every client reports a C2S every
#       1/PER_CLIENT_RATE s (default 0.2: GPS every 5 s) for DURATION_S (default 60)
#   SCENARIO=push bench/scripts/c1m.sh ...      closed-loop push batches of BATCH (default
#       1000) targets, REQUESTS of them (default: every client named 5 times)
#   HOLDER_IO=uring bench/scripts/c1m.sh ...    bench receivers on tokio-uring completions (default epoll)
#   SHARDS=2 bench/scripts/c1m.sh ...           shards per gateway worker (default 1)
#   PIN_SHARDS=true bench/scripts/c1m.sh ...    pin each worker's shards to CPUs in turn
#       (gateway.pin_shards; default false here: the kernel places them)
#   PARK_IDLE_S=1 bench/scripts/c1m.sh ...      gateway.park_idle_s (default 10; 0: never park)
set -euo pipefail
N=${1:-1000000}
OUT=${2:-bench/results/c1m-$N.json}
BIN=${TIDEGATE:-target/release/tidegate}
WORKERS=${WORKERS:-$(( (N + 17999) / 18000 ))}
HOLD_S=${HOLD_S:-60}
DIR=$(mktemp -d /tmp/tidegate-c1m.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    # Keep the last run's server logs for a look at any failures.
    rm -rf /tmp/tidegate-c1m-last-logs
    mkdir -p /tmp/tidegate-c1m-last-logs
    cp "$DIR"/*.log /tmp/tidegate-c1m-last-logs/ 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port); CLIENT_PORT=$(free_port); LINK_PORT=$(free_port); HTTP_PORT=$(free_port)
# Worker i's admin port is the base + i: keep the range clear of the others.
ADMIN_BASE=$(( 20000 + RANDOM % 20000 ))

cat > "$DIR/tidegate.toml" <<TOML
[gateway]
client_addr = "127.0.0.1:$CLIENT_PORT"
admin_addr = "127.0.0.1:$ADMIN_BASE"
logic = ["127.0.0.1:$LINK_PORT"]
# Held connections send a keepalive every 240 s (bench --keepalive-s).
keepalive_s = 300
idle_timeout_s = 900
# Each connection's pending receive sits in the ring's cancel hash, whose
# buckets grow with the ring (up to 256 at 4096 entries); every cancel walks
# one bucket, so 16 buckets made each login cost O(connections).
ring_depth = ${RING_DEPTH:-4096}
# One shard per worker process: dozens of workers already spread the load
# over both cores, and every extra shard is another thread to schedule.
shards = ${SHARDS:-1}
# Dozens of workers on two cores: pinned, they split the cores statically
# (worker w on CPU w mod 2) whatever else runs there; PIN_SHARDS=true for that.
pin_shards = ${PIN_SHARDS:-false}
# Quiet connections park (their task ends, the shard holds the socket)
# after this long; PARK_IDLE_S=0 keeps every connection a task.
park_idle_s = ${PARK_IDLE_S:-10}

[logic]
link_addr = "127.0.0.1:$LINK_PORT"
http_addr = "127.0.0.1:$HTTP_PORT"

[[apps]]
code = 1
secrets = ["tidegate-dev-secret-app-1"]
api_key = "tidegate-dev-api-key-app-1"
TOML

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --logfile "$DIR/redis.log" --dir "$DIR"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN" logic -c "$DIR/tidegate.toml" --redis "redis://127.0.0.1:$REDIS_PORT" >"$DIR/logic.log" 2>&1 &
PIDS+=($!)
"$BIN" gateway -c "$DIR/tidegate.toml" --workers "$WORKERS" >"$DIR/gateway.log" 2>&1 &
GATEWAY=$!
PIDS+=("$GATEWAY")
for _ in $(seq 300); do grep -q '^ready' "$DIR/gateway.log" && break; sleep 0.2; done
grep -q '^ready' "$DIR/gateway.log" || { tail -20 "$DIR/gateway.log"; exit 1; }

RATE_ARGS=()
[ -n "${RATE:-}" ] && RATE_ARGS=(--rate "$RATE")
IO_ARGS=(--holder-io "${HOLDER_IO:-epoll}")
# Held connections send a keepalive every 240 s (the gateway's idle timeout
# is 900 s here): at 20 s a million clients would send 50,000/s.
KEEPALIVE_S=${KEEPALIVE_S:-240}
case "${SCENARIO:-idle}" in
idle)
    "$BIN" bench idle --target "127.0.0.1:$CLIENT_PORT" --gateway-pid "$GATEWAY" \
        --connections "$N" --hold-s "$HOLD_S" --keepalive-s "$KEEPALIVE_S" \
        --concurrency "${CONCURRENCY:-4000}" "${RATE_ARGS[@]}" "${IO_ARGS[@]}" --json "$OUT" >/dev/null
    ;;
broadcast)
    "$BIN" bench broadcast --target "127.0.0.1:$CLIENT_PORT" --http "127.0.0.1:$HTTP_PORT" \
        --connections "$N" --messages "${MESSAGES:-5}" --interval-ms "${INTERVAL_MS:-5000}" --drain-s "${DRAIN_S:-10}" \
        --concurrency "${CONCURRENCY:-4000}" ${RATE:+--login-rate "$RATE"} "${IO_ARGS[@]}" --keepalive-s "$KEEPALIVE_S" --json "$OUT" >/dev/null
    ;;
connect)
    "$BIN" bench connect --target "127.0.0.1:$CLIENT_PORT" --connections "$N" \
        --concurrency "${CONCURRENCY:-4000}" "${RATE_ARGS[@]}" --json "$OUT" >/dev/null
    ;;
c2s)
    "$BIN" bench c2s --target "127.0.0.1:$CLIENT_PORT" --connections "$N" \
        --per-client-rate "${PER_CLIENT_RATE:-0.2}" --duration-s "${DURATION_S:-60}" --json "$OUT" >/dev/null
    ;;
push)
    BATCH=${BATCH:-1000}
    "$BIN" bench push --target "127.0.0.1:$CLIENT_PORT" --http "127.0.0.1:$HTTP_PORT" \
        --connections "$N" --batch "$BATCH" --requests "${REQUESTS:-$(( N * 5 / BATCH ))}" \
        --concurrency "${CONCURRENCY:-4}" "${IO_ARGS[@]}" --keepalive-s "$KEEPALIVE_S" --json "$OUT" >/dev/null
    ;;
*) echo "SCENARIO is idle, broadcast, connect, c2s or push" >&2; exit 2 ;;
esac
# The gateway workers' own counters, summed over workers and shards, go
# into the result beside bench's figures: a shortfall in deliveries reads
# against what the gateway queued, wrote and closed.
python3 - "$OUT" "$ADMIN_BASE" "$WORKERS" <<'PY'
import json, re, sys, urllib.request
out, base, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keep = re.compile(r"tidegate_gateway_(closed|queue_full|unparks|delivered|stale_deliveries|bytes_out|frames_out|parked_connections|connections|sessions|link_events)")
sums = {}
for w in range(workers):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{base + w}/metrics", timeout=5).read().decode()
    except OSError as e:
        sums.setdefault("scrape_failures", 0)
        sums["scrape_failures"] += 1
        continue
    for line in text.splitlines():
        if line.startswith("#") or not keep.match(line):
            continue
        name, value = line.rsplit(" ", 1)
        name = re.sub(r'shard="[^"]*",?', "", name).replace(",}", "}").replace("{}", "")
        sums[name] = sums.get(name, 0) + float(value)
r = json.load(open(out))
r["gateway_counters"] = dict(sorted(sums.items()))
json.dump(r, open(out, "w"), indent=2)
PY
python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.pop("samples", None)
r.pop("per_message", None)
print(json.dumps(r, indent=1))
PY
echo "redis used_memory: $(redis-cli -p "$REDIS_PORT" info memory | grep '^used_memory:' | tr -d '\r')"
