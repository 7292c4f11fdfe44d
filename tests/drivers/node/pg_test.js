'use strict';
// node-postgres (npm `pg`) through pgtenant in transaction mode, run by
// tests/drivers.rs. Named queries ({ name, text, values }) are parsed once
// per client connection (Parse + Bind + Describe + Execute + Sync the first
// time, then Bind + Describe + Execute + Sync), so every client keeps
// binding names that the server connection it lands on may never have
// seen. More clients than pool slots run at once. Asserts:
// - named queries return each caller's own values and the seeded rows;
// - the named statement is a proxy-named server-side statement;
// - a failing Execute in the same batch as the first Parse leaves the name
//   usable (prepared statements are not transactional), and a failing Parse
//   leaves the connection usable;
// - BEGIN ... COMMIT with named statements runs on one backend, sees its
//   own writes; ROLLBACK and an error roll back;
// - pg.Pool with named queries from many concurrent callers;
// - all clients together used at most pool_size backends.

const pg = require('pg');
const {
  conn, CLIENTS, POOL_SIZE, CheckFailed, check, checkEq, item, plain, yieldNow, run,
} = require('./common');

const DRIVER = 'node-postgres';
const ROUNDS = 15;
const backendPids = new Set();

const Q = {
  add: 'SELECT $1::int + $2::int AS s, $3::text AS tag, pg_backend_pid() AS pid',
  item: 'SELECT id, name, qty FROM items WHERE id = $1',
  range: 'SELECT id, name, qty FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id',
  sum: 'SELECT count(*)::int AS n, sum(qty)::int AS total FROM items WHERE id <= $1',
  seven: 'SELECT $1::int * 7 AS seven',
  ins: 'INSERT INTO ledger (driver, client, seq, amount) VALUES ($1, $2, $3, $4) RETURNING seq, pg_backend_pid() AS pid',
  own: 'SELECT count(*)::int AS n, coalesce(sum(amount), 0)::int AS amount, count(*) FILTER (WHERE seq < 0)::int AS neg, pg_backend_pid() AS pid FROM ledger WHERE driver = $1 AND client = $2',
  div: 'SELECT 10 / $1::int AS q',
};

const named = (client, name, values) => client.query({ name, text: Q[name], values });

async function queries(client, c) {
  for (let r = 0; r < ROUNDS; r++) {
    const a = c * 1000 + r;
    const tag = `c${c}r${r}`;
    let res = await named(client, 'add', [a, r, tag]);
    checkEq({ s: res.rows[0].s, tag: res.rows[0].tag }, { s: a + r, tag }, `client ${c} round ${r}: add`);
    backendPids.add(res.rows[0].pid);

    const i = ((c * 37 + r) % 1000) + 1;
    res = await named(client, 'item', [i]);
    checkEq(plain(res.rows), [item(i)], `client ${c}: item ${i}`);

    const hi = Math.min(i + 3, 1000);
    res = await named(client, 'range', [i, hi]);
    const want = [];
    for (let k = i; k <= hi; k++) want.push(item(k));
    checkEq(plain(res.rows), want, `client ${c}: items ${i}..${hi}`);

    const n = ((c + r) % 50) + 1;
    res = await named(client, 'sum', [n]);
    checkEq(plain(res.rows)[0], { n, total: (3 * n * (n + 1)) / 2 }, `client ${c}: count/sum of ${n}`);
    if (r % 4 === 0) await yieldNow();
  }
}

async function serverSide(client, c) {
  await client.query('BEGIN');
  const res = await named(client, 'seven', [c]);
  checkEq(res.rows[0].seven, c * 7, `client ${c}: seven`);
  const names = await client.query(
    'SELECT name FROM pg_prepared_statements WHERE statement = $1', [Q.seven]);
  await client.query('COMMIT');
  check(names.rows.length >= 1, `client ${c}: named query is not a prepared statement on its backend`);
  check(names.rows.every((r) => r.name.startsWith('pgt_')),
    `client ${c}: server-side names ${JSON.stringify(names.rows)} are not the proxy's pgt_ names`);
}

async function errors(client, c) {
  // First use of 'div' fails at Execute, in the batch that parses it, and
  // inside a transaction: the statement itself must survive.
  await client.query('BEGIN');
  await named(client, 'ins', [DRIVER, c, -2, 1000]);
  try {
    await named(client, 'div', [0]);
    throw new CheckFailed(`client ${c}: division by zero did not fail`);
  } catch (e) {
    if (e instanceof CheckFailed) throw e;
    checkEq(e.code, '22012', `client ${c}: SQLSTATE of division by zero (${e.message})`);
  }
  await client.query('ROLLBACK');
  for (let k = 1; k <= 3; k++) {
    const res = await named(client, 'div', [k]);
    checkEq(res.rows[0].q, Math.trunc(10 / k), `client ${c}: div after its failed first run`);
  }
  // A failing Parse of a named statement.
  try {
    await client.query({ name: `bad${c}`, text: 'SELEC 1', values: [] });
    throw new CheckFailed(`client ${c}: syntax error did not fail`);
  } catch (e) {
    if (e instanceof CheckFailed) throw e;
    checkEq(e.code, '42601', `client ${c}: SQLSTATE of syntax error`);
  }
  const res = await named(client, 'seven', [c + 1]);
  checkEq(res.rows[0].seven, (c + 1) * 7, `client ${c}: named query after a failed Parse`);
}

async function transactions(client, c) {
  let committed = 0;
  let amount = 0;
  for (let t = 0; t < 4; t++) {
    const pids = new Set();
    await client.query('BEGIN');
    for (let k = 0; k < 3; k++) {
      const seq = t * 10 + k;
      const res = await named(client, 'ins', [DRIVER, c, seq, seq + c]);
      checkEq(res.rows[0].seq, seq, `client ${c}: RETURNING`);
      pids.add(res.rows[0].pid);
    }
    const res = await named(client, 'own', [DRIVER, c]);
    pids.add(res.rows[0].pid);
    checkEq(res.rows[0].n, committed + 3, `client ${c} txn ${t}: own rows inside the transaction`);
    await client.query('COMMIT');
    check(pids.size === 1, `client ${c} txn ${t}: one transaction ran on backends ${[...pids]}`);
    committed += 3;
    for (let k = 0; k < 3; k++) amount += t * 10 + k + c;
  }
  await client.query('BEGIN');
  await named(client, 'ins', [DRIVER, c, -1, 1000]);
  await client.query('ROLLBACK');

  const res = await named(client, 'own', [DRIVER, c]);
  checkEq({ n: res.rows[0].n, amount: res.rows[0].amount, neg: res.rows[0].neg },
    { n: committed, amount, neg: 0 }, `client ${c}: committed rows after rollbacks`);
  return { committed, amount };
}

async function poolPhase() {
  const pool = new pg.Pool({ ...conn, max: 20, connectionTimeoutMillis: 10000 });
  try {
    const got = await Promise.all(Array.from({ length: 200 }, (_, k) => pool.query({
      name: 'pool_add', text: 'SELECT $1::int + 1 AS v, pg_backend_pid() AS pid', values: [k],
    }).then((res) => { backendPids.add(res.rows[0].pid); return res.rows[0].v; })));
    checkEq(got, Array.from({ length: 200 }, (_, k) => k + 1), 'pool results');
  } finally {
    await pool.end();
  }
}

async function main() {
  console.log(`pg ${require('pg/package.json').version}, ${CLIENTS} clients over pool_size ${POOL_SIZE}`);
  const clients = Array.from({ length: CLIENTS }, () => new pg.Client({ ...conn, connectionTimeoutMillis: 10000 }));
  await Promise.all(clients.map((cl) => cl.connect()));
  const totals = await Promise.all([
    ...clients.map(async (client, c) => {
      await queries(client, c);
      await serverSide(client, c);
      await errors(client, c);
      return transactions(client, c);
    }),
    poolPhase().then(() => ({ committed: 0, amount: 0 })),
  ]);
  const res = await clients[0].query(
    'SELECT count(*)::int AS n, sum(amount)::int AS amount FROM ledger WHERE driver = $1', [DRIVER]);
  const want = {
    n: totals.reduce((s, t) => s + t.committed, 0),
    amount: totals.reduce((s, t) => s + t.amount, 0),
  };
  checkEq(plain(res.rows)[0], want, "all clients' committed rows");
  const act = await clients[0].query(
    'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND usename = current_user');
  check(act.rows[0].n <= POOL_SIZE, `${act.rows[0].n} server connections for pool_size ${POOL_SIZE}`);
  check(backendPids.size >= 1 && backendPids.size <= POOL_SIZE,
    `${CLIENTS} clients used ${backendPids.size} backends, pool_size is ${POOL_SIZE}`);
  await Promise.all(clients.map((cl) => cl.end()));
  console.log(`ok: ${CLIENTS} clients + a pool of 20, ${backendPids.size} backends, ${want.n} ledger rows`);
}

run('node-postgres', main);
