#!/usr/bin/env bash
# Process testbed: N real `edge-node serve` processes, each in its own network namespace, joined by a bridge (they
# and the coordinator find each other by mDNS), with per-node bandwidth limits (tc tbf, both directions), per-link
# latency and loss emulated in user space on the pipes between stages (this kernel has no netem:
# EDGE_EMULATE_LATENCY_MS / EDGE_EMULATE_LOSS, test-only), and device profiles that cap a node's speed (lavapipe
# threads) and memory. Then `edge-coord run` plans, ships and generates, and prints measured tok/s, per-stage and
# per-hop times next to the planner's prediction. Without permission for `ip netns` it falls back to 127.0.0.1
# ports (no shaping) and says so. Everything is removed on exit, Ctrl-C or failure.
#
#   bash scripts/testbed.sh [-n NODES] [--rate 100mbit] [--latency-ms 2] [--loss 0.01] [--backend auto|cpu|wgpu]
#                           [--profiles fast,slow,small] [--prompt TEXT] [-- edge-coord run flags...]
# Profiles: fast (all cores, 1 GB), slow (one thread, 1 GB), small (one thread, 120 MB: holds part of the model
# only). Profiles are assigned to nodes round robin. The backend is the members' (default: auto).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

NODES=3 RATE="" LATENCY_MS=0 LOSS=0 PROFILES=fast BACKEND=auto PROMPT="Once upon a time, there was a little robot named"
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n|--nodes) NODES=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --latency-ms) LATENCY_MS=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        --profiles) PROFILES=$2; shift 2 ;;
        --backend) BACKEND=$2; shift 2 ;;
        --prompt) PROMPT=$2; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#EXTRA[@]} -gt 0 ] || EXTRA=(-n 32)
[ "$NODES" -ge 1 ] && [ "$NODES" -le 16 ] || { echo "--nodes must be 1..16" >&2; exit 2; }

# EDGE_BIN: use already built binaries (the tests do).
if [ -z "${EDGE_BIN:-}" ]; then cargo build --release -p edge-node -p edge-coord >&2; fi
export NODEVICE_SELECT=1
BIN=${EDGE_BIN:-$PWD/target/release}
WORK=$(mktemp -d)
TAG=tb$$
NSS=()
PIDS=()
cleanup() {
    local rc=$?
    set +e
    # On failure, the members' logs say what they saw (discovery, capability records, stages).
    if [ "$rc" != 0 ]; then
        for log in "$WORK"/node*.log; do
            [ -f "$log" ] && { echo "--- last lines of $(basename "$log") ---" >&2; tail -n 25 "$log" >&2; }
        done
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export EDGE_CLUSTER_KEY=$("$BIN/edge-coord" cluster-key)
IFS=, read -r -a PROFILE_LIST <<< "$PROFILES"

NETNS=1
if ! ip netns add "$TAG-hub" 2>/dev/null; then
    NETNS=0
    echo "note: \`ip netns\` is not permitted here: falling back to 127.0.0.1 ports (no bandwidth shaping, no mDNS)" >&2
else
    NSS+=("$TAG-hub")
    ip -n "$TAG-hub" link add br0 type bridge
    ip -n "$TAG-hub" link set br0 up
fi

# Joins namespace $1 to the hub bridge with address $2, shaping both directions to $RATE.
join_ns() {
    local ns=$1 addr=$2 i=$3
    ip netns add "$ns"; NSS+=("$ns")
    ip link add "$TAG-a$i" type veth peer name "$TAG-b$i"
    ip link set "$TAG-a$i" netns "$ns"
    ip link set "$TAG-b$i" netns "$TAG-hub"
    ip -n "$TAG-hub" link set "$TAG-b$i" master br0 up
    ip -n "$ns" link set "$TAG-a$i" name eth0
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    if [ -n "$RATE" ]; then
        tc -n "$ns" qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 200ms
        tc -n "$TAG-hub" qdisc add dev "$TAG-b$i" root tbf rate "$RATE" burst 64kb latency 200ms
    fi
}

# Replaces the calling (sub)shell with the command, in namespace $1 when namespaces are in use: run it as
# `(in_ns NS cmd...) &` so that $! is the command itself and killing it stops it.
in_ns() {
    local ns=$1; shift
    if [ "$NETNS" = 1 ]; then exec ip netns exec "$ns" "$@"; else exec "$@"; fi
}

FIRST=""
for i in $(seq 1 "$NODES"); do
    profile=${PROFILE_LIST[$(( (i - 1) % ${#PROFILE_LIST[@]} ))]}
    env=(EDGE_EMULATE_LATENCY_MS="$LATENCY_MS" EDGE_EMULATE_LOSS="$LOSS")
    mem=1000000000 threads=""
    case "$profile" in
        fast) ;;
        slow) env+=(LP_NUM_THREADS=1); threads=1 ;;
        small) env+=(LP_NUM_THREADS=1); threads=1; mem=120000000 ;;
        *) echo "unknown profile $profile (fast, slow, small)" >&2; exit 2 ;;
    esac
    args=(serve --data-dir "$WORK/node$i" --memory "$mem" --backend "$BACKEND")
    [ -n "$threads" ] && args+=(--threads "$threads")
    if [ "$NETNS" = 1 ]; then
        join_ns "$TAG-n$i" "10.252.0.$i" "$i"
        args+=(--listen "/ip4/10.252.0.$i/tcp/4001")
    else
        args+=(--listen /ip4/127.0.0.1/tcp/0 --no-mdns)
        [ -n "$FIRST" ] && args+=(--peer "$FIRST")
    fi
    (in_ns "$TAG-n$i" env "${env[@]}" "$BIN/edge-node" "${args[@]}" > "$WORK/node$i.out" 2> "$WORK/node$i.log") &
    PIDS+=($!)
    addr=$(wait_listening "${PIDS[-1]}" "$WORK/node$i.out" "$WORK/node$i.log")
    echo "node $i ($profile${RATE:+, $RATE}${LATENCY_MS:+, +${LATENCY_MS} ms}${LOSS:+, loss $LOSS}): $addr" >&2
    [ -z "$FIRST" ] && FIRST=$addr
done

# The members find each other by mDNS alone; the coordinator also by mDNS, and dials the first member too so a
# lost first mDNS query (the namespace's link just came up) cannot leave it alone.
# It plans once it has seen all NODES members (at most 60 s; fewer is an error naming who is missing).
coord=(run --data-dir "$WORK/coord" --wait 60 --min-nodes "$NODES" -p "$PROMPT" --peer "$FIRST")
if [ "$NETNS" = 1 ]; then
    join_ns "$TAG-c" 10.252.0.200 c
else
    coord+=(--no-mdns)
fi
echo "emulated pipe latency ${LATENCY_MS} ms per hop and loss ${LOSS} are not visible to the planner (it measures the real links)" >&2
# In the background and waited for, so that Ctrl-C reaches the traps at once.
(in_ns "$TAG-c" "$BIN/edge-coord" "${coord[@]}" "${EXTRA[@]}") &
PIDS+=($!)
wait "${PIDS[-1]}"
