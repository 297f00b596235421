#!/usr/bin/env python3
"""Sends garbage datagrams to a Plaza media port on 127.0.0.1, from many source addresses.

Usage: garbage_flood.py PORT TOTAL SOURCES

Datagrams are random bytes of 1-1400 bytes whose first byte is mostly one that RFC 7983 gives
STUN, DTLS or RTP/RTCP (so they reach past a first-byte check), sent round-robin from SOURCES
sockets bound on 127.0.0.1-127.0.0.200 (the caller makes those addresses exist, e.g. inside a
network namespace of its own). Traffic goes to 127.0.0.1 only; the loop is bounded by TOTAL.
"""
import os
import random
import socket
import sys
import time

port, total, sources = (int(a) for a in sys.argv[1:4])
socks = []
for i in range(sources):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.%d" % (1 + i % 200), 0))
    socks.append(s)
rnd = random.Random(7)
pool = []
for _ in range(4096):
    d = bytearray(os.urandom(rnd.randint(1, 1400)))
    d[0] = rnd.choice([0, 1, 2, 3, 0x16, 0x17, 0x80, 0x90, 0xFF, rnd.randint(0, 255)])
    pool.append(bytes(d))
started = time.time()
sent = 0
dst = ("127.0.0.1", port)
while sent < total:
    for s in socks:
        try:
            s.sendto(pool[sent % len(pool)], dst)
        except OSError:
            pass
        sent += 1
print("sent", sent, "datagrams in", round(time.time() - started, 1), "s")
