"""psycopg 3 through pgtenant in transaction mode (run by tests/drivers.rs).

Usage: test_psycopg.py [core|pipeline|custom-guc|abandoned]

Every statement is a named prepared statement (prepare_threshold=0), and
more clients than the placement has pool slots run at once, so each
client's statements keep landing on server connections that have never
seen them. Asserts results, not just the absence of errors.

core:
- parameterised queries return the caller's own values and seeded rows;
- the statements really are named server-side statements (the proxy's
  `pgt_` names show in pg_prepared_statements inside a transaction);
- multi-statement transactions run on one backend, see their own writes,
  commit, roll back (explicitly, and after an error) as PostgreSQL does
  (psycopg then sends DEALLOCATE ALL, which the proxy must absorb);
- SET statement_timeout / TimeZone follow their own client connection to
  whichever server runs its next transaction, never leak to other
  clients (nor does the reported TimeZone), and RESET / SET LOCAL / a
  rolled-back SET behave as in PostgreSQL.
pipeline: pipeline mode and executemany give the right rows, and clients
  idle after a pipeline hold no server connection.
custom-guc: a custom (placeholder) setting follows only its own client.
abandoned: clients that vanish mid-statement leave no SET and no stale
  statement cache behind.
Every scenario: all clients together used at most pool_size backends.
"""

import asyncio
import os
import socket
import struct
import sys

import psycopg
from psycopg import errors

from driver_common import (
    CLIENTS,
    DB,
    HOST,
    PASSWORD,
    POOL_SIZE,
    PORT,
    USER,
    CheckFailed,
    check,
    check_eq,
    item,
    log,
    phases,
    run,
    set_phase,
    within,
)

DRIVER = "psycopg"
ROUNDS = 15
TIMEZONES = ["Asia/Tokyo", "America/New_York", "Europe/Paris", "Australia/Sydney"]

backend_pids = set()


async def connect():
    return await psycopg.AsyncConnection.connect(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        dbname=DB,
        autocommit=True,
        prepare_threshold=0,
        connect_timeout=10,
    )


async def one(conn, query, params=None):
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def queries(conn, c):
    """Parameterised queries whose answers are unique to this client."""
    for r in range(ROUNDS):
        a, b, tag = c * 1000 + r, r, f"c{c}r{r}"
        row = await one(conn, "SELECT %s::int + %s::int, %s::text, pg_backend_pid()", (a, b, tag))
        check_eq(row[:2], (a + b, tag), f"client {c} round {r}: sum/tag")
        backend_pids.add(row[2])

        i = (c * 37 + r) % 1000 + 1
        row = await one(conn, "SELECT id, name, qty FROM items WHERE id = %s", (i,))
        check_eq(row, item(i), f"client {c}: items row {i}")

        n = (c + r) % 50 + 1
        row = await one(conn, "SELECT count(*), sum(qty) FROM items WHERE id <= %s", (n,))
        check_eq(row, (n, 3 * n * (n + 1) // 2), f"client {c}: count/sum of first {n} items")

        cur = await conn.execute(
            "SELECT id, name FROM items WHERE id BETWEEN %s AND %s ORDER BY id", (i, i + 4)
        )
        rows = await cur.fetchall()
        want = [item(k)[:2] for k in range(i, min(i + 4, 1000) + 1)]
        check_eq(rows, want, f"client {c}: items {i}..{i + 4}")
        if r % 5 == 0:
            await asyncio.sleep(0)


async def prepared_server_side(conn, c):
    """Inside one transaction, the statement just run is a named statement
    on that backend, under the proxy's derived name."""
    async with conn.transaction():
        row = await one(conn, "SELECT %s::int * 7 AS seven_times", (c,))
        check_eq(row[0], c * 7, f"client {c}: seven_times")
        cur = await conn.execute(
            "SELECT name FROM pg_prepared_statements WHERE statement = %s",
            ("SELECT $1::int * 7 AS seven_times",),
        )
        names = [r[0] for r in await cur.fetchall()]
    check(len(names) >= 1, f"client {c}: the query is not a named statement on its backend")
    check(
        all(n.startswith("pgt_") for n in names),
        f"client {c}: server-side statement names {names} are not the proxy's pgt_ names",
    )


async def transactions(conn, c):
    """Several statements per transaction: one backend, own writes visible,
    commit / rollback / error rollback; returns rows committed."""
    committed = 0
    amount_total = 0
    for t in range(4):
        pids = set()
        async with conn.transaction():
            for k in range(3):
                seq = t * 10 + k
                row = await one(
                    conn,
                    "INSERT INTO ledger (driver, client, seq, amount) VALUES (%s, %s, %s, %s) "
                    "RETURNING seq, pg_backend_pid()",
                    (DRIVER, c, seq, seq + c),
                )
                check_eq(row[0], seq, f"client {c}: RETURNING seq")
                pids.add(row[1])
            row = await one(
                conn,
                "SELECT count(*), pg_backend_pid() FROM ledger WHERE driver = %s AND client = %s",
                (DRIVER, c),
            )
            pids.add(row[1])
            check_eq(row[0], committed + 3, f"client {c} txn {t}: own rows inside the transaction")
            await conn.execute(
                "UPDATE ledger SET amount = amount + 1 WHERE driver = %s AND client = %s AND seq >= %s",
                (DRIVER, c, t * 10),
            )
            row = await one(conn, "SELECT txid_current_if_assigned() IS NOT NULL, pg_backend_pid()")
            check(row[0], f"client {c} txn {t}: writes must have a transaction id")
            pids.add(row[1])
        check(len(pids) == 1, f"client {c} txn {t}: statements of one transaction ran on backends {pids}")
        committed += 3
        amount_total += sum(t * 10 + k + c + 1 for k in range(3))

    # Explicit rollback: psycopg.Rollback leaves the block, rolled back.
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO ledger (driver, client, seq, amount) VALUES (%s, %s, -1, 1000)", (DRIVER, c)
        )
        raise psycopg.Rollback()

    # An error inside a transaction rolls the whole thing back.
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ledger (driver, client, seq, amount) VALUES (%s, %s, -2, 1000)",
                (DRIVER, c),
            )
            await conn.execute("SELECT 1 / %s::int", (0,))
        raise CheckFailed(f"client {c}: division by zero did not fail")
    except errors.DivisionByZero as e:
        check_eq(e.sqlstate, "22012", f"client {c}: SQLSTATE of division by zero")

    row = await one(
        conn,
        "SELECT count(*), coalesce(sum(amount), 0), count(*) FILTER (WHERE seq < 0) "
        "FROM ledger WHERE driver = %s AND client = %s",
        (DRIVER, c),
    )
    check_eq(row, (committed, amount_total, 0), f"client {c}: committed rows after rollbacks")
    return committed, amount_total


async def pipeline(conn, c):
    """psycopg pipeline mode: many prepared statements in flight, one Sync."""
    async with conn.pipeline() as p:
        curs = []
        for k in range(12):
            curs.append(await conn.execute("SELECT %s::int * 2, %s::text, pg_backend_pid()", (k + c, f"p{c}.{k}")))
            curs.append(await conn.execute("SELECT name FROM items WHERE id = %s", (k + 1,)))
        await p.sync()
        for k in range(12):
            row = await curs[2 * k].fetchone()
            check_eq(row[:2], ((k + c) * 2, f"p{c}.{k}"), f"client {c}: pipeline result {k}")
            backend_pids.add(row[2])
            row = await curs[2 * k + 1].fetchone()
            check_eq(row, (f"item-{k + 1}",), f"client {c}: pipeline item {k + 1}")


SETTINGS_QUERY = (
    "SELECT current_setting('statement_timeout'), current_setting('TimeZone'), "
    "current_setting('pgtenant_drivers.tag', true), pg_backend_pid()"
)


async def settings(conn, c, barrier, baseline, custom_guc):
    """SET follows its own client only. Even clients set, odd ones don't.
    With custom_guc, setters also SET a custom (placeholder) variable."""
    setter = c % 2 == 0
    # Milliseconds that no larger unit divides, so SHOW gives them back as is.
    timeout = f"{(100 + c) * 1000 + 1}ms"
    tz = TIMEZONES[c // 2 % len(TIMEZONES)]
    if setter:
        await conn.execute(f"SET statement_timeout = '{timeout}'")
        await conn.execute(f"SET TimeZone = '{tz}'")
        if custom_guc:
            await conn.execute(f"SET pgtenant_drivers.tag = 'client-{c}'")
        check_eq(conn.info.parameter_status("TimeZone"), tz, f"client {c}: reported TimeZone after SET")
    set_phase(c, "settings: barrier 1")
    await barrier.wait()
    set_phase(c, "settings: rounds")

    for r in range(ROUNDS):
        row = await one(conn, SETTINGS_QUERY)
        backend_pids.add(row[3])
        if setter:
            tag = f"client-{c}" if custom_guc else None
            check_eq(row[:3], (timeout, tz, tag), f"client {c} round {r}: own settings")
        else:
            check_eq(row[:2], baseline, f"client {c} round {r}: settings must not leak from other clients")
            check(row[2] in (None, ""), f"client {c} round {r}: custom GUC leaked from another client: {row[2]!r}")
        # And inside a transaction (set applied before BEGIN's server runs it).
        async with conn.transaction():
            row = await one(conn, SETTINGS_QUERY)
        want = (timeout, tz) if setter else baseline
        check_eq(row[:2], want, f"client {c} round {r}: settings inside a transaction")
        if r % 3 == 0:
            await asyncio.sleep(0)
    if setter:
        check_eq(conn.info.parameter_status("TimeZone"), tz, f"client {c}: reported TimeZone")
    else:
        check_eq(conn.info.parameter_status("TimeZone"), baseline[1], f"client {c}: reported TimeZone")
    set_phase(c, "settings: barrier 2")
    await barrier.wait()
    set_phase(c, "settings: SET LOCAL / rollback")

    # SET LOCAL lasts one transaction; a rolled-back SET is undone.
    async with conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = '7s'")
        row = await one(conn, "SELECT current_setting('statement_timeout')")
        check_eq(row[0], "7s", f"client {c}: SET LOCAL inside its transaction")
    async with conn.transaction():
        await conn.execute("SET statement_timeout = '8s'")
        raise psycopg.Rollback()
    row = await one(conn, SETTINGS_QUERY)
    check_eq(row[0], timeout if setter else baseline[0], f"client {c}: after SET LOCAL / rolled-back SET")

    # RESET returns to the startup value, as in PostgreSQL.
    if setter:
        await conn.execute("RESET statement_timeout")
        await conn.execute("RESET TimeZone")
        if custom_guc:
            await conn.execute("RESET pgtenant_drivers.tag")
    set_phase(c, "settings: barrier 3")
    await barrier.wait()
    set_phase(c, "settings: after RESET")
    for r in range(3):
        row = await one(conn, SETTINGS_QUERY)
        check_eq(row[:2], baseline, f"client {c}: settings after RESET")
        check(row[2] in (None, ""), f"client {c}: custom GUC after RESET: {row[2]!r}")
    check_eq(conn.info.parameter_status("TimeZone"), baseline[1], f"client {c}: reported TimeZone after RESET")


async def executemany_txn(conn, c):
    """executemany (pipelined Bind/Execute pairs, one Sync) in a transaction."""
    async with conn.transaction():
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO ledger (driver, client, seq, amount) VALUES (%s, %s, %s, %s)",
                [(DRIVER, c, 100 + k, k) for k in range(5)],
            )
        row = await one(
            conn, "SELECT count(*) FROM ledger WHERE driver = %s AND client = %s AND seq >= 100", (DRIVER, c)
        )
        check_eq(row[0], 5, f"client {c}: rows inserted by executemany")
    return 5, sum(range(5))


async def abandon(k, what):
    """A client that sends one statement and vanishes before the reply: a
    crashed or killed process (RST) or one that just hangs up (Terminate)."""
    conn = await connect()
    conn.pgconn.send_query(what.encode())
    conn.pgconn.flush()
    if k % 2 == 0:
        sk = socket.socket(fileno=os.dup(conn.pgconn.socket))
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sk.close()  # RST: the proxy sees the client gone mid-statement
    conn.pgconn.finish()


async def scenario_abandoned(conns, baseline):
    """Clients that leave mid-statement must leave nothing behind: not a
    SET (other clients would run with it), not a DEALLOCATE ALL (the
    proxy would believe its server-side statements still exist)."""
    query = "SELECT %s::int * 11, current_setting('statement_timeout'), pg_backend_pid()"

    async def rounds(tag):
        for r in range(3):
            for c, conn in enumerate(conns):
                try:
                    row = await one(conn, query, (c,))
                except psycopg.Error as e:
                    raise CheckFailed(f"{tag}: client {c} round {r}: {e.sqlstate}: {e}") from None
                backend_pids.add(row[2])
                check_eq(row[:2], (c * 11, baseline[0]), f"{tag}: client {c} round {r}")
            await asyncio.sleep(0.05)

    await rounds("before")  # every backend now holds the statement
    for k in range(8):
        await abandon(k, f"SET statement_timeout = '{90 + k}s'")
        await abandon(k, "DEALLOCATE ALL")
    await asyncio.sleep(0.5)  # the proxy recovers the abandoned connections
    await rounds("after clients abandoned SET / DEALLOCATE ALL")
    fresh = await asyncio.gather(*(connect() for _ in range(4)))
    for conn in fresh:
        row = await one(conn, "SELECT current_setting('statement_timeout')")
        check_eq(row[0], baseline[0], "a new client's statement_timeout")
        await conn.close()
    return "abandoned clients left no settings and no stale statements"


async def run_clients(conns, fn):
    await asyncio.gather(*(fn(conn, c) for c, conn in enumerate(conns)))


async def main(scenario):
    log(
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()}), "
        f"scenario {scenario}, {CLIENTS} clients over pool_size {POOL_SIZE}"
    )
    conns = await asyncio.gather(*(connect() for _ in range(CLIENTS)))
    check(all(conn.info.parameter_status("server_version") for conn in conns), "server_version reported")
    row = await one(conns[0], "SELECT current_setting('statement_timeout'), current_setting('TimeZone')")
    baseline = tuple(row)
    check_eq(baseline[0], "0", "baseline statement_timeout")
    barrier = asyncio.Barrier(CLIENTS)
    totals = {}

    if scenario == "core":
        async def core(conn, c):
            set_phase(c, "queries")
            await queries(conn, c)
            set_phase(c, "prepared_server_side")
            await prepared_server_side(conn, c)
            set_phase(c, "transactions")
            totals[c] = await transactions(conn, c)
            set_phase(c, "settings")
            await settings(conn, c, barrier, baseline, custom_guc=False)
            set_phase(c, "done")

        await run_clients(conns, core)
        done = "queries, named statements, transactions, settings"
    elif scenario == "pipeline":
        # The first half use pipeline mode / executemany, then sit idle,
        # which must hold no server connection; the second half then need
        # the pool.
        idle_from = CLIENTS // 2
        piped_left = [idle_from]
        piped_done = asyncio.Event()
        others_done = asyncio.Event()

        async def piped(conn, c):
            set_phase(c, "executemany")
            totals[c] = await executemany_txn(conn, c)
            set_phase(c, "pipeline")
            if not await within(15, pipeline(conn, c)):
                idle = sum(1 for p in phases.values() if p == "idle after pipeline")
                raise CheckFailed(
                    f"client {c}: its pipeline got no server connection within 15s while {idle} clients "
                    "sat idle after their own pipelines: an idle client must hold no server connection"
                ) from None
            set_phase(c, "idle after pipeline")
            piped_left[0] -= 1
            if piped_left[0] == 0:
                piped_done.set()
            await others_done.wait()
            set_phase(c, "pipeline again")
            await pipeline(conn, c)
            set_phase(c, "done")

        async def others(conn, c):
            set_phase(c, "waiting for the pipelines")
            await piped_done.wait()
            set_phase(c, "queries while pipeline clients are idle")
            if not await within(15, queries(conn, c)):
                raise CheckFailed(
                    f"client {c}: no server connection within 15s while {idle_from} clients that used "
                    "pipeline mode sat idle: idle clients must hold no server connection"
                )
            set_phase(c, "done")

        async def all_others():
            await asyncio.gather(*(others(conn, c) for c, conn in enumerate(conns) if c >= idle_from))
            others_done.set()

        await asyncio.gather(all_others(), *(piped(conn, c) for c, conn in enumerate(conns) if c < idle_from))
        done = "pipeline mode and executemany, then idle"
    elif scenario == "custom-guc":
        async def custom(conn, c):
            set_phase(c, "settings")
            await settings(conn, c, barrier, baseline, custom_guc=True)
            set_phase(c, "done")

        await run_clients(conns, custom)
        done = "custom GUCs follow their own client"
    elif scenario == "abandoned":
        done = await scenario_abandoned(conns, baseline)
    else:
        raise CheckFailed(f"unknown scenario {scenario!r}")

    if totals:
        row = await one(conns[0], "SELECT count(*), sum(amount) FROM ledger WHERE driver = %s", (DRIVER,))
        want = (sum(n for n, _ in totals.values()), sum(a for _, a in totals.values()))
        check_eq(row, want, "all clients' committed rows")
    row = await one(
        conns[0],
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = current_user",
    )
    check(row[0] <= POOL_SIZE, f"{row[0]} server connections for pool_size {POOL_SIZE}")
    # (Abandoned clients may cost a server connection its life, replaced
    # by a new backend: fine there.)
    check(
        1 <= len(backend_pids) <= POOL_SIZE or scenario == "abandoned",
        f"{CLIENTS} clients used {len(backend_pids)} backends, pool_size is {POOL_SIZE}",
    )
    for conn in conns:
        await conn.close()
    log(f"ok: {done}; {CLIENTS} clients, {len(backend_pids)} backends")


if __name__ == "__main__":
    scenario = sys.argv[1] if len(sys.argv) > 1 else "core"
    run(f"psycopg {scenario}", lambda: main(scenario))
