#!/bin/bash
# tests/real-systemd.sh - the shipped systemd units under a REAL systemd.
#
# Boots a Debian container with systemd as PID 1 (the shared tool
# real-systemd.sh: systemd-nspawn over a debootstrap rootfs, private network
# namespace), builds the .deb with `cargo deb` and runs the README's install
# block (between <!-- install:begin --> and <!-- install:end -->) line by
# line in the container, the password piped to `hash-password`. Then checks:
# the shipped deny list, socket activation of websocks-server.service by a
# WebSocks upgrade (101 and a tunnel), Type=notify status, `systemctl reload`
# (users file changed, then broken: the reload fails and the old
# configuration serves), a failed start that does not wedge the socket, the
# agent units (SOCKS5 on two sockets, HTTP on a third) through that server
# with curl, the journal, `systemctl stop`, a reinstall over itself (edited
# conffiles kept) and `apt purge` (no unit, group or file left).
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

say "building the release binary and the package"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked -q ||
  { echo "cannot install cargo-deb"; exit 1; }
BIN=$REPO/target/release/websocks

# The cached rootfs persists between runs: remove what a run installs.
UNITS="websocks-server.socket websocks-server.service websocks-agent.socket websocks-agent-http.socket websocks-agent.service"
uninstall() {
  cx sh -c "systemctl disable --now $UNITS; DEBIAN_FRONTEND=noninteractive apt-get purge -y -q websocks;
    rm -rf /etc/systemd/system/websocks-* /etc/websocks /usr/bin/websocks /root/src; groupdel websocks;
    systemctl daemon-reload; systemctl reset-failed" >/dev/null 2>&1
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
uninstall   # leftovers of an interrupted run

# ------------------------------------------- the README's install section
# Its lines, in order; `cargo ...` lines run here (they build the package),
# the others in the container as root (so without `sudo`), in one shell, so
# `digest=$(...)` carries to the next line. Each line's status is printed.
sed -n '/<!-- install:begin -->/,/<!-- install:end -->/p' "$REPO/README.md" |
  sed -e '1,2d' -e '$d' | sed '$d' >"$WORK/install.txt"
check "README install section found" test "$(wc -l <"$WORK/install.txt")" -ge 8
say "README install section:"; sed 's/^/    /' "$WORK/install.txt"
grep '^cargo ' "$WORK/install.txt" | while read -r line; do
  case "$line" in
    "cargo install cargo-deb"*) continue ;;   # installed above when missing
  esac
  say "host: $line"
  (cd "$REPO" && eval "$line") >"$WORK/cargo.log" 2>&1 || { tail -20 "$WORK/cargo.log"; exit 1; }
done || { echo "building the package failed"; exit 1; }
DEB=$(ls -t "$REPO"/target/debian/websocks_*.deb | head -1)
cx mkdir -p /root/src/target/debian
rs install -t /root/src/target/debian "$DEB" >/dev/null
printf 'al1ceSecret\n' >"$WORK/alice.pw"
rs install -t /root "$WORK/alice.pw" >/dev/null
{
  echo 'cd /root/src; export DEBIAN_FRONTEND=noninteractive; n=0'
  grep -v '^cargo ' "$WORK/install.txt" | sed -e 's/^sudo //' -e 's/| sudo /| /g' |
    sed 's#websocks hash-password)#websocks hash-password </root/alice.pw)#' |
    while IFS= read -r line; do
      printf '%s\n' "n=\$((n+1)); echo \"+ \$n: \"$(printf '%q' "$line")"
      printf '%s\n' "$line"
      printf '%s\n' 'echo "= $n: exit $?"'
    done
} >"$WORK/install.sh"
rs install -t /root "$WORK/install.sh" >/dev/null
# apt must not stop to ask (a local .deb whose dependencies are present).
cx sh -c 'echo "APT::Get::Assume-Yes \"true\";" >/etc/apt/apt.conf.d/99websocks-test'
cx bash /root/install.sh >"$WORK/install.out" 2>&1
sed 's/^/    /' "$WORK/install.out"
step() { grep -F "= $1: exit $2" "$WORK/install.out" >/dev/null; }
check "apt install ./target/debian/websocks_*.deb" step 1 0
check "check before a user: exit 78, says no users yet" \
  sh -c "step() { grep -F \"= \$1: exit \$2\" '$WORK/install.out' >/dev/null; }; step 2 78 && grep -F 'no users yet' '$WORK/install.out' >/dev/null"
check "hash-password (piped) and the users.yaml entry" sh -c "grep -F '= 3: exit 0' '$WORK/install.out' >/dev/null && grep -F '= 4: exit 0' '$WORK/install.out' >/dev/null"
check "check after the user: ok (1 users)" \
  sh -c "grep -F '= 5: exit 0' '$WORK/install.out' >/dev/null && grep -F 'ok (1 users)' '$WORK/install.out' >/dev/null"
check "systemctl enable --now websocks-server.socket" step 6 0
check "systemctl reload-or-restart websocks-server" step 7 0
if cx sh -c 'command -v man' >/dev/null 2>&1; then
  check "man websocks" step 8 0
else
  say "(no man-db in the container: checking the page is installed instead)"
  check "websocks(8) installed" cx test -s /usr/share/man/man8/websocks.8.gz
fi
check "installing enabled nothing but what the README enabled" \
  test "$(cx systemctl is-enabled websocks-agent.socket 2>/dev/null)" = disabled
check "group websocks exists (sysusers.d)" cx getent group websocks
check "/etc/websocks is root:websocks 0750" test "$(cx stat -c %U:%G:%a /etc/websocks)" = root:websocks:750
check "users.yaml is root:websocks 0640" test "$(cx stat -c %U:%G:%a /etc/websocks/users.yaml)" = root:websocks:640
check "the server runs after reload-or-restart" test "$(prop websocks-server.service ActiveState)" = active

# --------------------------------------------- as shipped: default deny list
out=$(client alice al1ceSecret 101 02 2>&1)
say "client: $out"
check "this host's loopback is refused as shipped (SOCKS5 02)" grep -q '^OK: 101 and SOCKS5 reply 02' <<<"$out"
# The operator allows it (for this trial's destinations) and reloads.
cx sh -c 'printf "  destinations:\n    allow: [\"127.0.0.0/8\"]\n" >>/etc/websocks/server.yaml'
check "systemctl reload (destinations allowed)" cx systemctl reload websocks-server.service
out=$(retry client alice al1ceSecret 101 2>&1; client alice al1ceSecret 101 2>&1)
say "client: $out"
check "a tunnel after the reload: 101 and the echo" grep -q '^OK: 101 and a tunnel' <<<"$out"

# ------------------------------------------------------- socket activation
cx systemctl stop websocks-server.service
check "websocks-server.socket still listening" test "$(prop websocks-server.socket ActiveState)" = active
check "service stopped" test "$(prop websocks-server.service ActiveState)" = inactive
out=$(client alice al1ceSecret 101 2>&1)
say "client: $out"
check "activation by a WebSocks upgrade: 101 and a tunnel" grep -q '^OK: 101' <<<"$out"
check "websocks-server.service active after activation" \
  test "$(prop websocks-server.service ActiveState)" = active
check "Type=notify STATUS= shown by systemd" \
  grep -q 'connections, 1 users' <<<"$(prop websocks-server.service StatusText)"
check "journal: listening on the socket from systemd" \
  journal_has websocks-server.service 'server listening on [::]:8080 (socket from systemd)'
check "journal: no listen/socket mismatch notice (they agree as shipped)" \
  sh -c "! bash '$TOOL' exec journalctl -b -u websocks-server.service --no-pager -o cat | grep -F 'systemd passed sockets' >/dev/null"
check "journal: the tunnel's line" journal_has websocks-server.service 'user=alice dst=127.0.0.1:'
pid1=$(prop websocks-server.service MainPID)

# ------------------------------------------------------------------ reload
cx sh -c "printf -- '- name: bob\n  password_hash: \"%s\"\n' \"\$(printf 'b0bSecret\n' | websocks hash-password)\" >/etc/websocks/users.yaml"
check "systemctl reload (users file changed)" cx systemctl reload websocks-server.service
check "the added user gets 101" retry client bob b0bSecret 101
check "the removed user gets 401" client alice al1ceSecret 401
check "journal: reloaded" journal_has websocks-server.service 'reloaded /etc/websocks/server.yaml: 1 users'
check "same process after reload" test "$(prop websocks-server.service MainPID)" = "$pid1"

cx cp /etc/websocks/users.yaml /root/users.good
cx sh -c "printf -- '- name: carol\n  password: [unclosed\n' >/etc/websocks/users.yaml"
cx systemctl reload websocks-server.service >"$WORK/reload.out" 2>&1; rc=$?
sed 's/^/    /' "$WORK/reload.out"
check "systemctl reload (broken users file) exits non-zero" test "$rc" != 0
check "systemctl status shows the file's error" \
  sh -c "bash '$TOOL' exec systemctl status --no-pager -n 20 websocks-server.service | grep -F '/etc/websocks/users.yaml:' >/dev/null"
check "still active, same process, after the refused reload" \
  test "$(prop websocks-server.service ActiveState)/$(prop websocks-server.service MainPID)" = "active/$pid1"
check "bob still gets 101 (the old configuration serves)" client bob b0bSecret 101
cx cp /root/users.good /etc/websocks/users.yaml

# ---------------------------------------- a failed start does not wedge
cx systemctl stop websocks-server.service
cx sh -c "printf '# nobody yet\n' >/etc/websocks/users.yaml"
restarts0=$(prop websocks-server.service NRestarts)
for i in 1 2 3; do client bob b0bSecret 101 >/dev/null 2>&1; sleep 0.3; done
check "starts with no users fail (ExecStartPre check)" \
  test "$(prop websocks-server.service Result)" = exit-code
check "journal: the failed start says why" journal_has websocks-server.service 'no users yet'
check "systemctl status shows why" \
  sh -c "bash '$TOOL' exec systemctl status --no-pager -n 20 websocks-server.service | grep -F 'no users yet' >/dev/null"
sleep 5   # past RestartSec: a restart loop would show by now
check "no restart loop after the failed check" \
  test "$(prop websocks-server.service NRestarts)" = "$restarts0"
# Twelve more triggers in a row: more than StartLimitBurst would allow if
# every one counted against it with restarts in between.
for i in $(seq 1 12); do client bob b0bSecret 101 >/dev/null 2>&1; done
check "the socket is not wedged (still listening)" \
  test "$(prop websocks-server.socket ActiveState)" = active
cx cp /root/users.good /etc/websocks/users.yaml
check "fixed file: the next connection starts it (no reset-failed)" retry client bob b0bSecret 101

# ------------------------------------------------------------------ agent
if command -v curl >/dev/null; then
  mkdir -p "$WORK/www"; echo "origin-$RANDOM$RANDOM" >"$WORK/www/hello.txt"
  rs net sh -c "echo \$\$ >'$WORK/origin.pid'; exec python3 -m http.server --bind 127.0.0.1 --directory '$WORK/www' 18000" >/dev/null 2>&1 &
  for _ in $(seq 1 50); do [ -s "$WORK/origin.pid" ] && break; sleep 0.1; done
  ORIGIN_PID=$(cat "$WORK/origin.pid")
  check "agent check as shipped fails: no server" \
    sh -c "! bash '$TOOL' exec websocks check -c /etc/websocks/agent.yaml"
  cx sh -c "sed -i 's#^  servers: \[\]#  servers:\n    - {name: local, url: \"ws://127.0.0.1:8080/\", user: bob, password: b0bSecret}#' /etc/websocks/agent.yaml"
  check "agent check after adding a server" cx websocks check -c /etc/websocks/agent.yaml
  cx systemctl enable --now websocks-agent.socket websocks-agent-http.socket >/dev/null 2>&1
  want=$(cat "$WORK/www/hello.txt")
  get() { rs net curl -sS --max-time 10 "$@" http://127.0.0.1:18000/hello.txt; }
  first=""
  for _ in $(seq 1 25); do first=$(get --socks5-hostname 127.0.0.1:1080 2>/dev/null) && break; sleep 0.2; done
  check "agent activated by SOCKS5 (127.0.0.1:1080), through the server: curl" test "$first" = "$want"
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
  fail "agent checks: curl is missing on the host"
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

# ---------------------------------------------- reinstall over itself, purge
cx systemctl start websocks-server.socket
client bob b0bSecret 101 >/dev/null 2>&1
pid2=$(prop websocks-server.service MainPID)
cx sh -c 'cd /root/src && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall ./target/debian/websocks_*.deb' >"$WORK/reinstall.out" 2>&1; rc=$?
tail -5 "$WORK/reinstall.out" | sed 's/^/    /'
check "apt reinstall over itself" test "$rc" = 0
check "edited users.yaml kept" cx grep -q 'name: bob' /etc/websocks/users.yaml
check "edited server.yaml kept" cx grep -q '127.0.0.0/8' /etc/websocks/server.yaml
check "edited agent.yaml kept" cx grep -q 'ws://127.0.0.1:8080/' /etc/websocks/agent.yaml
check "the running server was restarted on the new binary" \
  sh -c "p=\$(bash '$TOOL' exec systemctl show -p MainPID --value websocks-server.service); [ \"\$p\" != 0 ] && [ \"\$p\" != '$pid2' ]"
check "it still serves after the reinstall" retry client bob b0bSecret 101
check "the socket stays enabled" test "$(cx systemctl is-enabled websocks-server.socket)" = enabled
cx sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q websocks' >"$WORK/purge.out" 2>&1; rc=$?
tail -3 "$WORK/purge.out" | sed 's/^/    /'
check "apt purge" test "$rc" = 0
check "purge: no unit file left" sh -c "! bash '$TOOL' exec sh -c 'ls /lib/systemd/system/websocks* /etc/systemd/system/websocks* /etc/systemd/system/*/websocks*' 2>/dev/null | grep . >/dev/null"
check "purge: no unit loaded" sh -c "[ -z \"\$(bash '$TOOL' exec systemctl list-units --all --plain --no-legend 'websocks*')\" ]"
check "purge: nothing listens on 8080" sh -c "! bash '$TOOL' net python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8080), timeout=2)' 2>/dev/null"
check "purge: no /etc/websocks" sh -c "! bash '$TOOL' exec test -e /etc/websocks"
check "purge: no group websocks" sh -c "! bash '$TOOL' exec getent group websocks"
check "purge: no binary, man page or doc" sh -c "! bash '$TOOL' exec sh -c 'ls /usr/bin/websocks /usr/share/man/man8/websocks.8.gz /usr/share/doc/websocks' 2>/dev/null | grep . >/dev/null"
check "purge: dpkg forgot it" sh -c "! bash '$TOOL' exec dpkg -s websocks >/dev/null 2>&1"

say "took $(( $(date +%s) - T0 )) s"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "FAILED ${#FAILED[@]} check(s):"; printf '    %s\n' "${FAILED[@]}"
  exit 1
fi
say "all checks passed"
