#!/bin/bash
# Connection setup cost on the machine: system calls and CPU per tunnel.
#
#   benches/syscalls.sh BIN [N] [POOL]
#
# Starts BIN (e.g. target/release/websocks, from `cargo build --release`)
# as a server and as an agent with a pool of POOL (default 2), an echo
# destination and a client, all on 127.0.0.1, and opens N (default 1000)
# tunnels one after another: SOCKS5 greeting and CONNECT in one write, the
# reply, one byte echoed, close. Two passes of N tunnels, after 20 to warm
# up:
#
#   1. untraced: wall time and the CPU both daemons used per tunnel: utime
#      + stime from /proc/PID/stat (all threads; in clock ticks, 10 ms
#      each here, so take N of a few thousand), and the same from
#      /proc/PID/task/*/schedstat (nanoseconds);
#   2. under `strace -c -f` attached to both daemons: every system call of
#      every thread, per tunnel, by call. With one tunnel at a time this is
#      a deterministic figure even on a noisy machine (timing is not);
#      epoll_pwait counts the process's wake-ups.
#
# Ports are picked free on 127.0.0.1; set PORTS="server agent echo" to
# choose them. Needs python3 and strace. Everything it starts is stopped on
# exit, and its files (a temporary directory) removed; KEEP=1 keeps them and
# prints where (the raw strace summaries are s.strace and a.strace).
set -euo pipefail

BIN=${1:?usage: benches/syscalls.sh BIN [N] [POOL]}
N=${2:-1000}
POOL=${3:-2}
BIN=$(realpath "$BIN")
for tool in python3 strace; do
    command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/websocks-syscalls.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "files kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
cd "$DIR"

if [ -n "${PORTS:-}" ]; then
    read -r SP AP EP <<<"$PORTS"
else
    read -r SP AP EP < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
fi

cat > echo.py <<'PY'
import socket, sys, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1])))
l.listen(1024)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY

cat > client.py <<'PY'
import socket, struct, sys, time
proxy = ("127.0.0.1", int(sys.argv[1]))
dest_port, n = int(sys.argv[2]), int(sys.argv[3])
connect = (b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
           + struct.pack(">H", dest_port))
start = time.monotonic()
for i in range(n):
    s = socket.create_connection(proxy)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect)
    got = b""
    while len(got) < 12:
        d = s.recv(64)
        if not d:
            raise SystemExit(f"tunnel {i}: closed after {got!r}")
        got += d
    assert got[:2] == b"\x05\x00" and got[3] == 0 and len(got) == 12, got
    s.sendall(b"Z")
    assert s.recv(1) == b"Z"
    s.close()
print(f"{(time.monotonic() - start) / n * 1e6:.0f}")
PY

cat > s.yaml <<Y
log_target: stderr
log_level: warn
server:
  listen: ["127.0.0.1:$SP"]
  users: [{name: alice, password: pasSw0rD}]
  destinations: {allow: ["127.0.0.1:$EP"]}
Y
cat > a.yaml <<Y
log_target: stderr
log_level: warn
agent:
  socks5: {listen: ["127.0.0.1:$AP"]}
  servers: [{name: s, url: "ws://127.0.0.1:$SP/", user: alice, password: pasSw0rD}]
  pool: {size: $POOL}
Y

# Waits until something listens on 127.0.0.1:$1.
listening() {
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1)).close()" \
            2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

python3 echo.py "$EP" & PIDS+=($!)
"$BIN" server -c s.yaml 2>server.log & S=$!; PIDS+=($S)
"$BIN" agent -c a.yaml 2>agent.log & A=$!; PIDS+=($A)
listening "$EP"; listening "$SP"; listening "$AP"
sleep 0.5 # the pool fills
python3 client.py "$AP" "$EP" 20 >/dev/null

# utime + stime of a process, all threads, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Time on a CPU of a process's threads, in ns.
ns() { cat /proc/"$1"/task/*/schedstat | awk '{t += $1} END {printf "%d", t}'; }
HZ=$(getconf CLK_TCK)
s0=$(ticks $S); a0=$(ticks $A); sn0=$(ns $S); an0=$(ns $A)
us=$(python3 client.py "$AP" "$EP" "$N")
s1=$(ticks $S); a1=$(ticks $A); sn1=$(ns $S); an1=$(ns $A)

strace -c -f -p "$S" -o s.strace 2>/dev/null & TS=$!
strace -c -f -p "$A" -o a.strace 2>/dev/null & TA=$!
PIDS+=($TS $TA)
sleep 0.5 # attached
python3 client.py "$AP" "$EP" "$N" >/dev/null
sleep 0.2
kill -INT $TS $TA
wait $TS $TA 2>/dev/null || true

echo "$N tunnels, pool $POOL, $(basename "$BIN")"
awk -v n="$N" -v hz="$HZ" -v s="$((s1 - s0))" -v a="$((a1 - a0))" -v us="$us" \
    -v sn="$((sn1 - sn0))" -v an="$((an1 - an0))" 'BEGIN {
    printf "untraced: %s us per tunnel (wall, one at a time)\n", us
    printf "CPU per tunnel, stat: server %.0f us, agent %.0f us, both %.0f us\n",
        s / hz / n * 1e6, a / hz / n * 1e6, (s + a) / hz / n * 1e6
    printf "CPU per tunnel, schedstat: server %.1f us, agent %.1f us, both %.1f us\n",
        sn / n / 1e3, an / n / 1e3, (sn + an) / n / 1e3 }'
# strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall"; the
# calls are field 4 on every row, the total's included.
for w in server agent; do
    f=${w:0:1}.strace
    awk -v n="$N" -v who="$w" '
        $NF == "total" { total = $4 }
        $4 ~ /^[0-9]+$/ && $NF != "total" { calls[$NF] = $4 }
        END {
            printf "%s: %d calls, %.1f per tunnel; wake-ups (epoll_pwait) %.1f per tunnel\n",
                who, total, total / n, calls["epoll_pwait"] / n
            for (c in calls) printf "  %-16s %7d %6.1f\n", c, calls[c], calls[c] / n | "sort -k2 -n -r"
            close("sort -k2 -n -r")
        }' "$f"
done
