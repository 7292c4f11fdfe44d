'use strict';
// postgres.js (npm `postgres`) through pgtenant in transaction mode, run by
// tests/drivers.rs. By default (prepare: true) postgres.js prepares every
// query as a named statement per connection and pipelines queries on its
// connections, so many Parse/Bind/Execute/Sync groups are in flight at
// once. Its pool of connections is larger than the proxy's pool. Asserts:
// - hundreds of concurrent parameterised queries return their own values
//   and the seeded rows;
// - the query is a proxy-named server-side statement;
// - a failing execution leaves the prepared query usable;
// - sql.begin transactions run on one backend, see their own writes,
//   commit; pipelined queries (an array) inside a transaction; a savepoint
//   rolled back alone; a throwing callback rolls everything back;
// - all clients together used at most pool_size backends.

const postgres = require('postgres');
const {
  conn, CLIENTS, POOL_SIZE, CheckFailed, check, checkEq, item, plain, run,
} = require('./common');

const DRIVER = 'postgres.js';
const QUERIES = 600;
const TXNS = 40;
const backendPids = new Set();

async function oneQuery(sql, k) {
  const tag = `q${k}`;
  const [row] = await sql`SELECT ${k}::int * 3 + 1 AS v, ${tag}::text AS tag, pg_backend_pid() AS pid`;
  checkEq({ v: row.v, tag: row.tag }, { v: k * 3 + 1, tag }, `query ${k}`);
  backendPids.add(row.pid);
  const i = ((k * 37) % 1000) + 1;
  const rows = await sql`SELECT id, name, qty FROM items WHERE id = ${i}`;
  checkEq(plain(rows), [item(i)], `query ${k}: item ${i}`);
  const n = (k % 60) + 1;
  const [agg] = await sql`SELECT count(*)::int AS n, sum(qty)::int AS total FROM items WHERE id <= ${n}`;
  checkEq({ ...agg }, { n, total: (3 * n * (n + 1)) / 2 }, `query ${k}: count/sum of ${n}`);
}

async function serverSide(sql, c) {
  const names = await sql.begin(async (tx) => {
    const [row] = await tx`SELECT ${c}::int * 7 AS seven`;
    checkEq(row.seven, c * 7, `txn ${c}: seven`);
    return tx`SELECT name FROM pg_prepared_statements WHERE statement = ${'SELECT $1::int * 7 AS seven'}`;
  });
  check(names.length >= 1, `txn ${c}: the query is not a named statement on its backend`);
  check(names.every((r) => r.name.startsWith('pgt_')),
    `txn ${c}: server-side names ${JSON.stringify([...names])} are not the proxy's pgt_ names`);
}

async function errors(sql, c) {
  for (let k = 0; k < 2; k++) {
    try {
      await sql`SELECT 10 / ${0}::int AS q`;
      throw new CheckFailed(`client ${c}: division by zero did not fail`);
    } catch (e) {
      if (e instanceof CheckFailed) throw e;
      checkEq(e.code, '22012', `client ${c}: SQLSTATE of division by zero (${e.message})`);
    }
    const [row] = await sql`SELECT 10 / ${2}::int AS q`;
    checkEq(row.q, 5, `client ${c}: query after its failed run`);
  }
}

async function transaction(sql, c) {
  const pids = new Set();
  const result = await sql.begin(async (tx) => {
    for (let k = 0; k < 3; k++) {
      const [row] = await tx`
        INSERT INTO ledger (driver, client, seq, amount) VALUES (${DRIVER}, ${c}, ${k}, ${k + c})
        RETURNING seq, pg_backend_pid() AS pid`;
      checkEq(row.seq, k, `txn ${c}: RETURNING`);
      pids.add(row.pid);
    }
    // A savepoint rolled back on its own.
    try {
      await tx.savepoint(async (sp) => {
        await sp`INSERT INTO ledger (driver, client, seq, amount) VALUES (${DRIVER}, ${c}, -1, 1000)`;
        throw new Error('roll back the savepoint');
      });
    } catch (e) {
      if (e.message !== 'roll back the savepoint') throw e;
    }
    // Pipelined inside the transaction: three queries in flight at once.
    return Promise.all([
      tx`SELECT count(*)::int AS n, pg_backend_pid() AS pid FROM ledger WHERE driver = ${DRIVER} AND client = ${c}`,
      tx`SELECT ${c}::int AS c, pg_backend_pid() AS pid`,
      tx`SELECT txid_current_if_assigned() IS NOT NULL AS has_xid, pg_backend_pid() AS pid`,
    ]);
  });
  const [[own], [echo], [xid]] = result;
  checkEq(own.n, 3, `txn ${c}: own rows inside the transaction`);
  checkEq(echo.c, c, `txn ${c}: pipelined echo`);
  check(xid.has_xid, `txn ${c}: writes must have a transaction id`);
  for (const r of [own, echo, xid]) pids.add(r.pid);
  check(pids.size === 1, `txn ${c}: one transaction ran on backends ${[...pids]}`);

  // A throwing callback rolls the whole transaction back.
  try {
    await sql.begin(async (tx) => {
      await tx`INSERT INTO ledger (driver, client, seq, amount) VALUES (${DRIVER}, ${c}, -2, 1000)`;
      await tx`SELECT 1 / ${0}::int`;
    });
    throw new CheckFailed(`txn ${c}: error in transaction did not fail`);
  } catch (e) {
    if (e instanceof CheckFailed) throw e;
    checkEq(e.code, '22012', `txn ${c}: SQLSTATE (${e.message})`);
  }
  return { committed: 3, amount: 3 * c + 3 };
}

// One connection, hundreds of queries in flight at once: postgres.js
// writes them as one long pipeline of Bind/Execute/Sync groups.
async function deepPipeline() {
  const sql = postgres({ ...conn, max: 1, connect_timeout: 10, onnotice: () => {} });
  try {
    const n = 2000;
    const rows = await Promise.all(Array.from({ length: n }, (_, k) => sql`SELECT ${k}::int AS v, ${`t${k}`}::text AS tag`));
    checkEq(rows.map(([r]) => [r.v, r.tag]), Array.from({ length: n }, (_, k) => [k, `t${k}`]),
      `${n} pipelined queries on one connection`);
    console.log(`ok: ${n} queries pipelined on one connection`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function main() {
  if (process.argv[2] === 'deep-pipeline') {
    await deepPipeline();
    return;
  }
  const { version } = JSON.parse(require('node:fs').readFileSync(
    require('node:path').join(__dirname, 'node_modules/postgres/package.json'), 'utf8'));
  console.log(`postgres ${version}, ${CLIENTS} connections over pool_size ${POOL_SIZE}`);
  const sql = postgres({
    ...conn,
    max: CLIENTS,
    connect_timeout: 10,
    idle_timeout: 0,
    prepare: true,
    onnotice: () => {},
  });
  try {
    // Open all connections first so every query below really runs with
    // more client connections than the proxy has server connections.
    await Promise.all(Array.from({ length: CLIENTS }, () => sql.reserve()))
      .then((reserved) => reserved.forEach((r) => r.release()));

    // Waves of 60 concurrent callers over 30 connections: a few queries
    // pipelined per connection (the deep-pipeline scenario goes further).
    for (let wave = 0; wave < QUERIES; wave += 60) {
      await Promise.all(Array.from({ length: 60 }, (_, k) => oneQuery(sql, wave + k)));
    }
    await Promise.all(Array.from({ length: TXNS }, (_, c) => serverSide(sql, c)));
    await Promise.all(Array.from({ length: 10 }, (_, c) => errors(sql, c)));
    const totals = await Promise.all(Array.from({ length: TXNS }, (_, c) => transaction(sql, c)));

    const [row] = await sql`SELECT count(*)::int AS n, sum(amount)::int AS amount FROM ledger WHERE driver = ${DRIVER}`;
    const want = {
      n: totals.reduce((s, t) => s + t.committed, 0),
      amount: totals.reduce((s, t) => s + t.amount, 0),
    };
    checkEq({ ...row }, want, "all transactions' committed rows");
    const [act] = await sql`
      SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND usename = current_user`;
    check(act.n <= POOL_SIZE, `${act.n} server connections for pool_size ${POOL_SIZE}`);
    check(backendPids.size >= 1 && backendPids.size <= POOL_SIZE,
      `${CLIENTS} connections used ${backendPids.size} backends, pool_size is ${POOL_SIZE}`);
    console.log(`ok: ${QUERIES * 3} queries and ${TXNS} transactions on ${CLIENTS} connections, `
      + `${backendPids.size} backends, ${want.n} ledger rows`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

run(`postgres.js ${process.argv[2] || 'core'}`, main);
