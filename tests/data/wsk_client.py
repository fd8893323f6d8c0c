#!/usr/bin/env python3
"""A minimal WebSocks client for tests/real-systemd.sh (stdlib only).

Usage: wsk_client.py HOST PORT USER PASSWORD EXPECT [REPLY]
Upgrades with the minute-salted Basic credential and checks the status code
is EXPECT. With EXPECT=101 it also opens a tunnel to an echo server it runs
on 127.0.0.1 (in the same network namespace) and checks the bytes come back;
with REPLY (a SOCKS5 reply code in hex, e.g. 02) it checks the CONNECT is
answered with that code instead.
Exit 0 on success; prints one line either way.
"""
import base64, hashlib, socket, sys, threading, time

host, port, user, password, expect = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
want_reply = int(sys.argv[6], 16) if len(sys.argv) > 6 else 0

def b64(b):
    return base64.b64encode(b).decode()

stored = b64(hashlib.sha256(password.encode()).digest())
minute = int(time.time() * 1000) // 60000 * 60000
field = b64(hashlib.sha256((stored + str(minute)).encode()).digest())
auth = "Basic " + b64(("%s:%s" % (user, field)).encode())

def read_exact(s, n, have=b""):
    while len(have) < n:
        c = s.recv(n - len(have))
        if not c:
            raise SystemExit("FAIL: EOF after %d of %d bytes" % (len(have), n))
        have += c
    return have

echo = socket.socket()
echo.bind(("127.0.0.1", 0))
echo.listen(1)
def serve():
    c, _ = echo.accept()
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
threading.Thread(target=serve, daemon=True).start()

s = socket.create_connection((host, port), timeout=10)
s.sendall((
    "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: %s\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: socks5\r\nAuthorization: %s\r\n\r\n" % (host, auth)
).encode())
buf = b""
while b"\r\n\r\n" not in buf:
    c = s.recv(4096)
    if not c:
        raise SystemExit("FAIL: EOF before the response head: %r" % buf)
    buf += c
head, rest = buf.split(b"\r\n\r\n", 1)
status = head.split(b" ")[1].decode()
if status != expect:
    raise SystemExit("FAIL: status %s, expected %s: %r" % (status, expect, head))
if expect != "101":
    print("OK: %s for %s" % (status, user))
    sys.exit(0)
# Frame header, SOCKS5 greeting (no auth) and CONNECT to the echo server.
eport = echo.getsockname()[1]
s.sendall(b"\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff" + b"\x05\x01\x00"
          + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + eport.to_bytes(2, "big"))
got = read_exact(s, 12 + 10, rest)
if got[10:12] != b"\x05\x00" or got[12:14] != bytes([5, want_reply]):
    raise SystemExit("FAIL: SOCKS5 reply %r, expected code %02x" % (got, want_reply))
if want_reply != 0:
    print("OK: 101 and SOCKS5 reply %02x for %s" % (want_reply, user))
    sys.exit(0)
msg = b"hello through websocks " + str(time.time()).encode()
s.sendall(msg)
back = read_exact(s, len(msg))
if back != msg:
    raise SystemExit("FAIL: echo %r" % back)
print("OK: 101 and a tunnel for %s" % user)
