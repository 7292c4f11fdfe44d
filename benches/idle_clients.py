#!/usr/bin/env python3
"""Opens N idle clients to a PostgreSQL-protocol endpoint and holds them.

Each client: StartupMessage (trust authentication), waits for
ReadyForQuery, sends one simple `SELECT 1`, reads up to ReadyForQuery,
then stays connected doing nothing. Prints "ready N SECONDS" once every
client is idle, then waits for a line on stdin (or EOF) and closes them.
Raw protocol over asyncio, no driver: 10,000 connections from one process
with almost no client-side memory. With `tls`, each client sends an
SSLRequest and encrypts (the certificate is not checked).

    idle_clients.py HOST PORT USER DATABASE N [tls]
"""
import asyncio
import ssl
import struct
import sys
import time

SSL_REQUEST = struct.pack("!II", 8, 80877103)


def startup(user, database):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


QUERY = b"Q" + struct.pack("!I", 4 + 9) + b"SELECT 1\0"


async def until_ready(reader):
    while True:
        head = await reader.readexactly(5)
        tag, length = head[:1], struct.unpack("!I", head[1:])[0]
        body = await reader.readexactly(length - 4)
        if tag == b"E":
            raise RuntimeError("server error: %r" % body[:200])
        if tag == b"R" and struct.unpack("!I", body[:4])[0] != 0:
            raise RuntimeError("needs a password: use trust")
        if tag == b"Z":
            return


async def one(host, port, user, database, held, tls):
    reader, writer = await asyncio.open_connection(host, port)
    if tls is not None:
        writer.write(SSL_REQUEST)
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("the server does not speak TLS")
        await writer.start_tls(tls)
    writer.write(startup(user, database))
    await until_ready(reader)
    writer.write(QUERY)
    await until_ready(reader)
    held.append(writer)


async def main():
    host, port, user, database, n = sys.argv[1:6]
    port, n = int(port), int(n)
    tls = None
    if sys.argv[6:7] == ["tls"]:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    held = []
    started = time.monotonic()
    # In waves under max_unauthenticated_per_address (128), so neither
    # side's login caps or accept backlog are what is measured.
    wave = 100
    for i in range(0, n, wave):
        await asyncio.gather(*(one(host, port, user, database, held, tls) for _ in range(min(wave, n - i))))
    print("ready %d %.1f" % (len(held), time.monotonic() - started), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in held:
        w.close()


asyncio.run(main())
