"""asyncpg through pgtenant in transaction mode (run by tests/drivers.rs).

asyncpg prepares every statement with parameters as a named statement
(`__asyncpg_stmt_N__`) and caches it per connection, the classic failure
case for transaction-mode poolers ("prepared statement ... does not
exist"). Many more connections than pool slots run at once. Asserts:

- fetch / fetchrow / fetchval with parameters return the caller's values
  and the seeded rows, including array parameters;
- `connection.prepare()` statements reused many times, with the right
  column description, across whatever server connections serve them;
- a tiny statement cache (evictions send Close, re-prepares use new names
  for the same text) keeps giving right answers;
- a failing execution leaves the cached statement usable;
- transaction blocks run on one backend, see their own writes, commit;
  a nested block (SAVEPOINT) rolls back alone; executemany and a
  server-side cursor (named portal fetched in chunks) inside a transaction;
- asyncpg's own pool (its reset query runs RESET ALL) over the proxy;
- all clients together used at most pool_size backends.
"""

import asyncio

import asyncpg

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
    run,
    set_phase,
)

DRIVER = "asyncpg"
ROUNDS = 15

backend_pids = set()


class Abort(Exception):
    pass


async def connect(**kw):
    return await asyncpg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, timeout=10, **kw
    )


async def queries(conn, c):
    for r in range(ROUNDS):
        v = await conn.fetchval("SELECT $1::int * 2 + $2::int", c, r)
        check_eq(v, c * 2 + r, f"client {c} round {r}: fetchval")

        row = await conn.fetchrow("SELECT $1::text AS tag, pg_backend_pid() AS pid", f"c{c}r{r}")
        check_eq(row["tag"], f"c{c}r{r}", f"client {c} round {r}: fetchrow tag")
        backend_pids.add(row["pid"])

        ids = [(c * 31 + r * 7 + k * 101) % 1000 + 1 for k in range(5)]
        rows = await conn.fetch(
            "SELECT id, name, qty FROM items WHERE id = ANY($1::int[]) ORDER BY id", ids
        )
        check_eq([tuple(x) for x in rows], [item(i) for i in sorted(set(ids))], f"client {c}: fetch by ids")

        n = (c + r) % 40 + 1
        row = await conn.fetchrow("SELECT count(*) AS n, sum(qty) AS total FROM items WHERE id <= $1", n)
        check_eq((row["n"], row["total"]), (n, 3 * n * (n + 1) // 2), f"client {c}: count/sum of {n}")
        if r % 4 == 0:
            await asyncio.sleep(0)


async def prepared(conn, c):
    stmt = await conn.prepare("SELECT name, qty, pg_backend_pid() AS pid FROM items WHERE id = $1")
    check_eq([a.name for a in stmt.get_attributes()], ["name", "qty", "pid"], f"client {c}: attributes")
    check_eq([t.name for t in stmt.get_parameters()], ["int4"], f"client {c}: parameter types")
    total = await conn.prepare("SELECT sum(qty) FROM items WHERE id BETWEEN $1 AND $2")
    for k in range(40):
        i = (c * 13 + k * 17) % 1000 + 1
        row = await stmt.fetchrow(i)
        check_eq((row["name"], row["qty"]), item(i)[1:], f"client {c}: prepared row {i} (use {k})")
        backend_pids.add(row["pid"])
        check_eq(await stmt.fetchval(i, column=1), i * 3, f"client {c}: prepared fetchval column=1")
        lo, hi = i, i + k % 5
        hi = min(hi, 1000)
        check_eq(await total.fetchval(lo, hi), 3 * sum(range(lo, hi + 1)), f"client {c}: sum {lo}..{hi}")
        if k % 8 == 0:
            await asyncio.sleep(0)
    rows = await stmt.fetch(5)
    check_eq([tuple(x)[:2] for x in rows], [item(5)[1:]], f"client {c}: prepared fetch")


async def errors_keep_statements(conn, c):
    for k in range(3):
        try:
            await conn.fetchval("SELECT 10 / $1::int", 0)
            raise CheckFailed(f"client {c}: division by zero did not fail")
        except asyncpg.exceptions.DivisionByZeroError as e:
            check_eq(e.sqlstate, "22012", f"client {c}: SQLSTATE")
        check_eq(await conn.fetchval("SELECT 10 / $1::int", 2), 5, f"client {c}: statement after its error")


async def transactions(conn, c):
    committed, amount = 0, 0
    for t in range(3):
        pids = set()
        async with conn.transaction():
            for k in range(3):
                seq = t * 100 + k
                row = await conn.fetchrow(
                    "INSERT INTO ledger (driver, client, seq, amount) VALUES ($1, $2, $3, $4) "
                    "RETURNING seq, pg_backend_pid() AS pid",
                    DRIVER, c, seq, seq + c,
                )
                check_eq(row["seq"], seq, f"client {c}: RETURNING")
                pids.add(row["pid"])
            await conn.executemany(
                "INSERT INTO ledger (driver, client, seq, amount) VALUES ($1, $2, $3, $4)",
                [(DRIVER, c, t * 100 + 10 + k, 1) for k in range(5)],
            )
            # A nested block is a SAVEPOINT: rolled back alone.
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO ledger (driver, client, seq, amount) VALUES ($1, $2, -1, 1000)", DRIVER, c
                    )
                    raise Abort()
            except Abort:
                pass
            row = await conn.fetchrow(
                "SELECT count(*) AS n, pg_backend_pid() AS pid FROM ledger WHERE driver = $1 AND client = $2",
                DRIVER, c,
            )
            pids.add(row["pid"])
            check_eq(row["n"], committed + 8, f"client {c} txn {t}: own rows inside the transaction")
            # A server-side cursor: a named portal fetched 7 rows at a time.
            ids = [rec["id"] async for rec in conn.cursor(
                "SELECT id FROM items WHERE id <= $1 ORDER BY id", 30 + c, prefetch=7
            )]
            check_eq(ids, list(range(1, 31 + c)), f"client {c} txn {t}: cursor rows")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            pids.add(pid)
        check(len(pids) == 1, f"client {c} txn {t}: one transaction ran on backends {pids}")
        committed += 8
        amount += sum(t * 100 + k + c for k in range(3)) + 5

    # An error rolls the whole block back.
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ledger (driver, client, seq, amount) VALUES ($1, $2, -2, 1000)", DRIVER, c
            )
            await conn.fetchval("SELECT 1 / $1::int", 0)
        raise CheckFailed(f"client {c}: error in transaction did not fail")
    except asyncpg.exceptions.DivisionByZeroError:
        pass
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(amount), 0) AS amount, count(*) FILTER (WHERE seq < 0) AS neg "
        "FROM ledger WHERE driver = $1 AND client = $2",
        DRIVER, c,
    )
    check_eq(tuple(row), (committed, amount, 0), f"client {c}: committed rows after rollbacks")
    return committed, amount


async def small_cache(c):
    """statement_cache_size=3 with 8 distinct queries: constant eviction
    (Close of the old name) and re-preparing the same text under a new
    name."""
    conn = await connect(statement_cache_size=3)
    try:
        for r in range(4):
            for q in range(8):
                v = await conn.fetchval(f"SELECT $1::int + {q}", c * 10 + r)
                check_eq(v, c * 10 + r + q, f"small-cache client {c}: query {q} round {r}")
    finally:
        await conn.close()


async def client(conn, c, totals):
    set_phase(c, "queries")
    await queries(conn, c)
    set_phase(c, "prepared")
    await prepared(conn, c)
    set_phase(c, "errors_keep_statements")
    await errors_keep_statements(conn, c)
    set_phase(c, "transactions")
    totals[c] = await transactions(conn, c)
    if c % 4 == 0:
        set_phase(c, "small_cache")
        await small_cache(c)
    set_phase(c, "done")


async def pool_phase():
    set_phase("pool", "pool")
    pool = await asyncpg.create_pool(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, min_size=10, max_size=10, timeout=10
    )
    try:
        got = await asyncio.gather(*(pool.fetchval("SELECT $1::int + 1", k) for k in range(200)))
        check_eq(got, [k + 1 for k in range(200)], "pool fetchval results")
        # A SET on one pooled connection; asyncpg's release resets it
        # (RESET ALL), and it never shows on the other pooled connections.
        async with pool.acquire() as con:
            await con.execute("SET statement_timeout = '42s'")
            check_eq(await con.fetchval("SELECT current_setting('statement_timeout')"), "42s", "pool SET")
        async def show(_):
            async with pool.acquire() as con:
                return await con.fetchval("SELECT current_setting('statement_timeout')")
        seen = await asyncio.gather(*(show(k) for k in range(30)))
        check(all(s == "0" for s in seen), f"pool connections see a leaked or unreset setting: {set(seen)}")
    finally:
        await pool.close()
    set_phase("pool", "done")


async def main():
    log(f"asyncpg {asyncpg.__version__}, {CLIENTS} clients over pool_size {POOL_SIZE}")
    conns = await asyncio.gather(*(connect() for _ in range(CLIENTS)))
    totals = {}
    await asyncio.gather(
        *(client(conn, c, totals) for c, conn in enumerate(conns)),
        pool_phase(),
    )
    row = await conns[0].fetchrow(
        "SELECT count(*) AS n, sum(amount) AS amount FROM ledger WHERE driver = $1", DRIVER
    )
    want = (sum(n for n, _ in totals.values()), sum(a for _, a in totals.values()))
    check_eq((row["n"], row["amount"]), want, "all clients' committed rows")
    n = await conns[0].fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = current_user"
    )
    check(n <= POOL_SIZE, f"{n} server connections for pool_size {POOL_SIZE}")
    check(
        1 <= len(backend_pids) <= POOL_SIZE,
        f"{CLIENTS} clients used {len(backend_pids)} backends, pool_size is {POOL_SIZE}",
    )
    await asyncio.gather(*(conn.close() for conn in conns))
    log(f"ok: {CLIENTS} clients + a pool of 10, {len(backend_pids)} backends, {want[0]} ledger rows")


if __name__ == "__main__":
    run("asyncpg", main)
