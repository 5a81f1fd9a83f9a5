# Shared by demo.sh and testbed.sh (sourced, not run).

# Waits (at most 60 s) until the member started as process $1 prints `listening ADDR` into file $2, and prints
# ADDR; on failure shows its log $3 and exits.
wait_listening() {
    local pid=$1 out=$2 log=$3
    for _ in $(seq 1 600); do
        grep -q '^listening ' "$out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    local addr
    addr=$(grep -m1 '^listening ' "$out" | cut -d' ' -f2)
    [ -n "$addr" ] || { echo "a member did not start" >&2; cat "$log" >&2; exit 1; }
    echo "$addr"
}
