#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*) from the reference
vectors (../shared/vectors, README there) and tests/data transcripts, plus a
few hand-made messages. Run from fuzz/: python3 seeds.py [VECTORS_DIR]."""
import json, os, re, struct, sys, glob

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)
vectors = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "..", "shared", "vectors")
seeds = {}

def add(target, data):
    seeds.setdefault(target, [])
    if data not in seeds[target]:
        seeds[target].append(data)

def transcript(path):
    """Yields (direction, label, bytes) for each labelled range of each block."""
    blocks, labels, cur, d = [], [], None, None
    for line in open(path):
        m = re.match(r"#   \[(\d+)\.\.(\d+)\) (.*)", line)
        if m:
            labels.append((int(m[1]), int(m[2]), m[3]))
            continue
        m = re.match(r"([CS][<>]) [0-9a-f]{4}  ([0-9a-f ]*)\|", line)
        if m:
            if cur is None:
                cur, d = bytearray(), m[1]
            cur += bytes.fromhex(m[2].replace(" ", ""))
            continue
        if cur is not None:
            blocks.append((d, bytes(cur), labels))
            cur, labels = None, []
    if cur is not None:
        blocks.append((d, bytes(cur), labels))
    for d, b, ls in blocks:
        for a, z, label in ls:
            yield d, label, b[a:z], b

tx = sorted(set(glob.glob(os.path.join(vectors, "transcripts", "*.txt")) +
                glob.glob(os.path.join(repo, "tests", "data", "*.txt"))))
for path in tx:
    client, server, pre = b"", b"", b""
    for d, label, part, block in transcript(path):
        if d == "C>" and label.startswith("SOCKS5"):
            client += part
        if d == "S<" and label.startswith("SOCKS5"):
            server += part
        if d == "C>" and ("WebSocket" in label or label.startswith("SOCKS5")):
            pre += part
        if label.startswith("HTTP upgrade request"):
            add("http_request", part)
            add("ws_upgrade", part)
            add("proxy_request", b"\x00" + part)
        if label.startswith("HTTP upgrade response"):
            add("http_response", part)
    add("socks5_server", client)
    add("socks5_client", server)
    add("ws_preamble", b"\x02\x00\x03" + pre)

for case in json.load(open(os.path.join(vectors, "auth.json"))):
    ms = int(case["minute_ms"])
    add("auth", b"\x08" + struct.pack(">Q", ms) + case["expected_authorization_header"].encode())

add("socks5_server", b"\x05\x02\x00\x02\x01\x05alice\x06secret\x05\x01\x00\x04" + bytes(16) + b"\x01\xbb")
add("socks5_client", b"\x05\x02\x05\x00\x00\x03\x0bexample.com\x00\x50")
add("socks5_client", b"\x05\x05\x00\x04" + bytes(15) + b"\x01\x00\x16")
add("proxy_request", b"\x00CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
add("proxy_request", b"\x00CONNECT [::1]:22 HTTP/1.1\r\n\r\n")
add("proxy_request", b"\x02\x01\x07POST http://u@example.com:8080/a?b HTTP/1.1\r\nHost: x\r\n"
    b"Proxy-Connection: keep-alive\r\nConnection: X-A, te\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhelloGET")
add("proxy_request", b"\x01\x09PUT http://example.com HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nNEXT")
add("proxy_request", b"\x00GET /proxy.pac HTTP/1.0\r\n\r\n")
add("proxy_chunked", b"\x01\x03" + b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n")
add("proxy_chunked", b"\x00" + b"0\r\nExpires: never\r\nX: y\r\n\r\nGET")
add("proxy_chunked", b"\x00" + b"ffffffffffffffff\r\n")
for u in ["ws://example.com:8080/socks", "wss://[::1]/", "ws://127.0.0.1", "WSS://h:443/a/b?c"]:
    add("ws_url", u.encode())
for f in sorted(glob.glob(os.path.join(repo, "contrib", "*.yaml")) +
                glob.glob(os.path.join(repo, "contrib", "deb", "*.yaml"))):
    add("config", open(f, "rb").read())
rule_head = bytes([10, 0, 0, 0, 10, 1, 2, 3, 0, 22, 0, 80, 8])
for r in ["10.0.0.0/8", "10.0.0.0/8:22", "[fe80::/10]:443", "*:25", "*:6000-6063",
          "::ffff:10.0.0.0/104", "127.0.0.1", "*"]:
    add("acl_rule", rule_head + r.encode())
for s in ["10s", "250ms", "5m", "1h", "30", " 2 m ", "8760h"]:
    add("duration", s.encode())

for target, items in sorted(seeds.items()):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for n, data in enumerate(items):
        open(os.path.join(d, "seed-%02d" % n), "wb").write(data)
    print(target, len(items))
