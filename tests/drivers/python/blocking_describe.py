"""Issue 17 point 7: one thread's blocking libpq PQdescribePrepared
(psycopg's pgconn.describe_prepared holds the GIL while it waits) over a
pool smaller than the client count, while five other threads run short
transactions. Those threads cannot run until the describe returns, and
they hold every server connection mid-transaction: the describe must be
answered without one. Usage: blocking_describe.py DSN ROUNDS"""
import sys
import threading
import time

import psycopg

dsn = sys.argv[1]
rounds = int(sys.argv[2])
stop = False
errors = []


def worker(i):
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop:
                with conn.transaction():
                    conn.execute("SELECT %s::int", (i,)).fetchone()
                    conn.execute("SELECT 1").fetchone()
    except Exception as e:  # reported below
        errors.append(f"worker {i}: {e!r}")


threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
for t in threads:
    t.start()
worst = 0.0
try:
    with psycopg.connect(dsn, autocommit=True) as conn:
        res = conn.pgconn.prepare(b"s1", b"SELECT $1::int + 1")
        if res.status != 1:
            errors.append(f"prepare: {res.error_message!r}")
        for r in range(rounds):
            if errors:
                break
            for _ in range(3):
                with conn.transaction():
                    conn.execute("SELECT %s::int", (r,)).fetchone()
            t0 = time.monotonic()
            res = conn.pgconn.describe_prepared(b"s1")
            worst = max(worst, time.monotonic() - t0)
            if res.status != 1 or res.nparams != 1:
                errors.append(f"describe round {r}: {res.error_message!r}")
finally:
    stop = True
    for t in threads:
        t.join()
print(f"worst describe {worst:.3f}s; errors {errors[:3]}")
sys.exit(1 if errors else 0)
