#!/bin/bash
# tests/real-systemd.sh - the shipped systemd units under a REAL systemd.
#
# Boots a Debian container with systemd as PID 1 (the shared tool
# real-systemd.sh: systemd-nspawn over a debootstrap rootfs, private network
# namespace), installs the release binary and contrib/systemd/*, and checks:
# socket activation of websocks-server.service by a WebSocks upgrade (101 and
# a tunnel), Type=notify status, `systemctl reload` (users file changed, then
# broken), the journal, `systemctl stop`; then the agent units (SOCKS5 on two
# sockets, HTTP on a third) through that server.
#
# The configuration is laid out as planned for packages: group `websocks`
# (groupadd --system), /etc/websocks root:websocks 0750, files 0640.
#
# Usage (as root): tests/real-systemd.sh [PATH/TO/real-systemd.sh]
#   default tool path: ../shared/tools/real-systemd.sh beside the repository.
# Needs root and systemd-nspawn (the tool apt-get installs systemd-container
# and debootstrap when missing); otherwise prints "SKIPPED: <reason>", exit 0.
# First run: debootstrap (~40 s, Debian mirror); later runs reuse the rootfs
# cached in $RS_DIR. Exit 0 when every check passed, 1 otherwise.
#
# Environment: RS_DIR (default /var/tmp/websocks-real-systemd), RS_MACHINE
# (default websocks-rs), RS_KEEP_UP=1 to leave the container running.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
skip() { echo "SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn)"
TOOL=${1:-$REPO/../shared/tools/real-systemd.sh}
[ -f "$TOOL" ] || skip "no real-systemd.sh at $TOOL (pass its path as \$1)"
TOOL=$(readlink -f "$TOOL")
if ! command -v systemd-nspawn >/dev/null && ! command -v apt-get >/dev/null; then
  skip "systemd-nspawn is missing and apt-get cannot install it"
fi
command -v python3 >/dev/null || skip "python3 is missing (the test client)"
export RS_DIR=${RS_DIR:-/var/tmp/websocks-real-systemd}
export RS_MACHINE=${RS_MACHINE:-websocks-rs}

T0=$(date +%s)
say() { printf '[real-systemd-test %s] %s\n' "$(date +%T)" "$*"; }
FAILED=()
pass() { say "PASS $1"; }
fail() { say "FAIL $1"; FAILED+=("$1"); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
rs() { bash "$TOOL" "$@"; }
cx() { rs exec "$@"; }                       # inside the container
client() { rs net python3 "$REPO/tests/data/wsk_client.py" 127.0.0.1 8080 "$@"; }
journal() { cx journalctl -b -u "$1" --no-pager -o cat; }   # -b: the rootfs (and journal) is reused
# (no grep -q on a pipe: with pipefail, journalctl's SIGPIPE would fail it)
journal_has() { journal "$1" | grep -F -- "$2" >/dev/null; }
prop() { cx systemctl show -p "$2" --value "$1"; }
retry() { local i; for i in $(seq 1 25); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }

say "building the release binary"
(cd "$REPO" && cargo build --release -q) || { echo "cargo build --release failed"; exit 1; }
BIN=$REPO/target/release/websocks

# The cached rootfs persists between runs: remove what a run installs.
UNITS="websocks-server.socket websocks-server.service websocks-agent.socket websocks-agent-http.socket websocks-agent.service"
uninstall() {
  cx sh -c "systemctl disable --now $UNITS; cd /etc/systemd/system &&
    rm -rf websocks-* /etc/websocks /usr/bin/websocks /usr/share/man/man8/websocks.8 \
      /usr/share/man/man5/websocks.yaml.5; groupdel websocks; systemctl daemon-reload;
    systemctl reset-failed" >/dev/null 2>&1
}
WORK=$(mktemp -d)
cleanup() {
  [ "${RS_KEEP_UP:-0}" = 1 ] || { uninstall; rs down >/dev/null 2>&1; }
  [ -n "${ORIGIN_PID:-}" ] && kill "$ORIGIN_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say "booting the container ($RS_MACHINE, cache $RS_DIR)"
rs up >"$WORK/up.log" 2>&1 || { tail -20 "$WORK/up.log"; skip "the container did not boot (see above)"; }

# ------------------------------------------------------------ installation
uninstall   # leftovers of an interrupted run
rs install "$REPO"/contrib/systemd/*.service "$REPO"/contrib/systemd/*.socket >/dev/null
rs install -t /usr/bin "$BIN" >/dev/null
rs install -t /usr/share/man/man8 "$REPO/man/websocks.8" >/dev/null
rs install -t /usr/share/man/man5 "$REPO/man/websocks.yaml.5" >/dev/null
cat >"$WORK/server.yaml" <<'EOF'
log_level: info
shutdown_grace: 5s
server:
  listen: ["[::]:8080"]
  users_file: users.yaml
  destinations:
    allow: ["127.0.0.0/8"]
EOF
printf -- '- name: alice\n  password: al1ceSecret\n' >"$WORK/users.yaml"
cat >"$WORK/agent.yaml" <<'EOF'
agent:
  socks5: {listen: ["127.0.0.1:1080", "[::1]:1080"]}
  http: {listen: ["127.0.0.1:8118"]}
  servers:
    - {name: local, url: "ws://127.0.0.1:8080/", user: bob, password: b0bSecret}
EOF
rs install -t /etc/websocks "$WORK/server.yaml" "$WORK/users.yaml" "$WORK/agent.yaml" >/dev/null
cx sh -c 'getent group websocks >/dev/null || groupadd --system websocks
  chown root:websocks /etc/websocks /etc/websocks/*.yaml
  chmod 0750 /etc/websocks; chmod 0640 /etc/websocks/*.yaml
  chmod 0755 /usr/bin/websocks'
cx systemctl daemon-reload
check "systemd-analyze verify (in the container)" \
  cx systemd-analyze verify --man=no /etc/systemd/system/websocks-server.service \
    /etc/systemd/system/websocks-server.socket /etc/systemd/system/websocks-agent.service \
    /etc/systemd/system/websocks-agent.socket /etc/systemd/system/websocks-agent-http.socket

# ------------------------------------------------------- socket activation
cx systemctl enable --now websocks-server.socket >/dev/null 2>&1
check "websocks-server.socket listening" test "$(prop websocks-server.socket ActiveState)" = active
check "service not started before the first connection" \
  test "$(prop websocks-server.service ActiveState)" = inactive
out=$(client alice al1ceSecret 101 2>&1)
say "client: $out"
if grep -q 'Permission denied' <(journal websocks-server.service); then
  fail "DynamicUser reads root:websocks 0640 files (the unit needs Group=websocks)"
  say "continuing with a drop-in: [Service] Group=websocks"
  for s in websocks-server websocks-agent; do
    cx sh -c "mkdir -p /etc/systemd/system/$s.service.d &&
      printf '[Service]\nGroup=websocks\n' >/etc/systemd/system/$s.service.d/group.conf"
  done
  cx systemctl daemon-reload
  cx systemctl reset-failed websocks-server.service
  cx systemctl restart websocks-server.socket
  out=$(client alice al1ceSecret 101 2>&1)
  say "client: $out"
fi
check "activation by a WebSocks upgrade: 101 and a tunnel" grep -q '^OK: 101' <<<"$out"
check "websocks-server.service active after activation" \
  test "$(prop websocks-server.service ActiveState)" = active
check "Type=notify STATUS= shown by systemd" \
  grep -q 'connections, 1 users' <<<"$(prop websocks-server.service StatusText)"
check "journal: listening on the socket from systemd" \
  journal_has websocks-server.service 'server listening on [::]:8080 (socket from systemd)'
check "journal: the tunnel's line" journal_has websocks-server.service 'user=alice dst=127.0.0.1:'
pid1=$(prop websocks-server.service MainPID)

# ------------------------------------------------------------------ reload
printf -- '- name: bob\n  password: b0bSecret\n' >"$WORK/users.yaml"
rs install -t /etc/websocks "$WORK/users.yaml" >/dev/null
check "systemctl reload (users file changed)" cx systemctl reload websocks-server.service
check "the added user gets 101" retry client bob b0bSecret 101
check "the removed user gets 401" client alice al1ceSecret 401
check "journal: reloaded" journal_has websocks-server.service 'reloaded /etc/websocks/server.yaml: 1 users'
check "journal: systemd saw the reload" journal_has websocks-server.service 'Reloaded websocks-server.service'
check "same process after reload" test "$(prop websocks-server.service MainPID)" = "$pid1"

printf -- '- name: carol\n  password: [unclosed\n' >"$WORK/users.yaml"
rs install -t /etc/websocks "$WORK/users.yaml" >/dev/null
check "systemctl reload (broken users file) succeeds" cx systemctl reload websocks-server.service
check "journal: reload failed, old configuration kept" \
  retry journal_has websocks-server.service 'reload failed, keeping the running configuration'
check "journal priority err for the failed reload" \
  grep -q 'reload failed' <(cx journalctl -b -u websocks-server.service -p err --no-pager -o cat)
check "STATUS= says the reload failed" \
  retry sh -c "bash '$TOOL' exec systemctl show -p StatusText --value websocks-server.service | grep -q '^reload failed, running the old configuration'"
check "still active after the failed reload" \
  test "$(prop websocks-server.service ActiveState)" = active
check "bob still gets 101" client bob b0bSecret 101

# ------------------------------------------------------------------ agent
if command -v curl >/dev/null; then
  mkdir -p "$WORK/www"; echo "origin-$RANDOM$RANDOM" >"$WORK/www/hello.txt"
  rs net sh -c "echo \$\$ >'$WORK/origin.pid'; exec python3 -m http.server --bind 127.0.0.1 --directory '$WORK/www' 18000" >/dev/null 2>&1 &
  for _ in $(seq 1 50); do [ -s "$WORK/origin.pid" ] && break; sleep 0.1; done
  ORIGIN_PID=$(cat "$WORK/origin.pid")
  cx systemctl enable --now websocks-agent.socket websocks-agent-http.socket >/dev/null 2>&1
  want=$(cat "$WORK/www/hello.txt")
  get() { rs net curl -sS --max-time 10 "$@" http://127.0.0.1:18000/hello.txt; }
  first=""
  for _ in $(seq 1 25); do first=$(get --socks5-hostname 127.0.0.1:1080 2>/dev/null) && break; sleep 0.2; done
  check "agent activated by SOCKS5 (127.0.0.1:1080), through the server" test "$first" = "$want"
  check "agent SOCKS5 on [::1]:1080" test "$(get --socks5-hostname '[::1]:1080')" = "$want"
  check "agent HTTP proxy on 127.0.0.1:8118" test "$(get --proxy http://127.0.0.1:8118)" = "$want"
  check "websocks-agent.service active" test "$(prop websocks-agent.service ActiveState)" = active
  for l in 'agent socks5 listening on 127.0.0.1:1080 (socket from systemd)' \
           'agent socks5 listening on [::1]:1080 (socket from systemd)' \
           'agent http listening on 127.0.0.1:8118 (socket from systemd)'; do
    check "journal: $l" journal_has websocks-agent.service "$l"
  done
  check "agent STATUS=" grep -q 'servers healthy' <<<"$(prop websocks-agent.service StatusText)"
  check "systemctl reload websocks-agent.service" cx systemctl reload websocks-agent.service
  check "agent journal: reloaded" retry journal_has websocks-agent.service 'reloaded /etc/websocks/agent.yaml'
  kill "$ORIGIN_PID" 2>/dev/null; ORIGIN_PID=
  check "systemctl stop websocks-agent" cx systemctl stop websocks-agent.service websocks-agent.socket websocks-agent-http.socket
  check "agent exit status 0" test "$(prop websocks-agent.service ExecMainStatus)" = 0
else
  say "SKIPPED agent checks: curl is missing"
fi

# -------------------------------------------------------------------- stop
check "systemctl stop websocks-server" cx systemctl stop websocks-server.service websocks-server.socket
check "server exit status 0" test "$(prop websocks-server.service ExecMainStatus)" = 0
check "server result success" test "$(prop websocks-server.service Result)" = success
check "journal: drained and stopped" journal_has websocks-server.service 'stopping: no longer accepting'
check "journal: stopped" journal_has websocks-server.service 'stopped'
{ journal websocks-server.service; journal websocks-agent.service; } >"$WORK/journal.txt"
no_secrets() {
  local pw
  for pw in al1ceSecret b0bSecret; do
    grep -F -e "$pw" -e "$(printf '%s\n' "$pw" | "$BIN" hash-password)" "$WORK/journal.txt" && return 1
  done
  return 0
}
check "no password or digest in the journal" no_secrets
say "server journal:"; journal websocks-server.service | sed 's/^/    /' | tail -25

say "took $(( $(date +%s) - T0 )) s"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "FAILED ${#FAILED[@]} check(s):"; printf '    %s\n' "${FAILED[@]}"
  exit 1
fi
say "all checks passed"
