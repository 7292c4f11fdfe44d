//! Issue 21, point 7: `deploy/grafana/pgtenant-dashboard.json` against a
//! real proxy. Every PromQL expression of the dashboard (panels, panels
//! nested in collapsed rows, template variable queries) parses with a real
//! PromQL parser (`promql-parser`), and every metric it selects, every
//! label it matches or groups by, and every literal label value it
//! matches is one the proxy really serves on `/metrics` after real traffic
//! (parsed with `prometheus-parse`, as `tests/metrics.rs` does). Also the
//! dashboard's shape: unique panel ids, the datasource variable on every
//! panel and query, only defined variables used.

mod common;

use common::http::{http, wait_healthy};
use common::{TestPg, TestProxy};
use pgtenant::pgcluster::{HostAuth, free_port};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, LabelModifier, VectorMatchCardinality, VectorSelector};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const TOKEN: &str = "dashboard-token-0123456789";
/// Labels Prometheus adds to every scraped series: the dashboard may
/// select and group by them, though the proxy never writes them.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];
/// Stands for a template variable's value in an expression; never a real
/// label value.
const VAR: &str = "GRAFANA_VARIABLE";

/// What `/metrics` serves: series name -> label name -> values.
type Exposed = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// One PromQL expression of the dashboard and where it is.
struct Query {
    at: String,
    expr: String,
    /// Labels the query needs beyond its expression (`label_values`).
    labels: Vec<String>,
}

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/pgtenant-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// The template variables' names; panics on a query variable whose query
/// is not `label_values(SELECTOR, LABEL)`.
fn variables(dash: &Value, queries: &mut Vec<Query>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for v in dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        let name = v["name"].as_str().expect("variable name");
        names.insert(name.to_owned());
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a query variable's query");
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {q}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: label_values(SELECTOR, LABEL): {q}"));
        assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}");
        queries.push(Query {
            at: format!("variable {name}"),
            expr: selector.trim().to_owned(),
            labels: vec![label.trim().to_owned()],
        });
    }
    names
}

/// Every query of the dashboard, after checking the panels' shape.
fn queries(dash: &Value) -> (Vec<Query>, BTreeSet<String>) {
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let mut out = Vec::new();
    let vars = variables(dash, &mut out);
    let ds = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().expect("panel title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "id of {title}"
        );
        let grid = &p["gridPos"];
        let (x, w) = (
            grid["x"].as_u64().expect("x"),
            grid["w"].as_u64().expect("w"),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            out.push(Query {
                at: format!("panel {title:?}"),
                expr: t["expr"].as_str().expect("expr").to_owned(),
                labels: Vec::new(),
            });
        }
    }
    (out, vars)
}

/// The expression with Grafana's variables replaced: interval variables
/// by a duration, the dashboard's own by `VAR`; an unknown one is an
/// error.
fn expand(expr: &str, vars: &BTreeSet<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, used) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or("unclosed ${")?;
                let name = braced[..end].split(':').next().unwrap_or("");
                (name, end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if matches!(name, "__rate_interval" | "__interval" | "__range") {
            out.push_str("5m");
        } else if vars.contains(name) {
            out.push_str(VAR);
        } else {
            return Err(format!("undefined variable ${name}"));
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What an expression uses.
#[derive(Default)]
struct Uses {
    selectors: Vec<VectorSelector>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left/right`,
    /// and the metrics below them.
    groupings: Vec<(Vec<String>, BTreeSet<String>)>,
    /// Misuse the parser accepts.
    problems: Vec<String>,
}

fn labels_of(m: &LabelModifier) -> Vec<String> {
    match m {
        LabelModifier::Include(l) | LabelModifier::Exclude(l) => l.labels.clone(),
    }
}

/// Walks `e`; returns the metric names below it.
fn walk(e: &Expr, uses: &mut Uses) -> BTreeSet<String> {
    match e {
        Expr::Aggregate(a) => {
            let mut below = walk(&a.expr, uses);
            if let Some(p) = &a.param {
                below.extend(walk(p, uses));
            }
            if let Some(m) = &a.modifier {
                uses.groupings.push((labels_of(m), below.clone()));
            }
            below
        }
        Expr::Binary(b) => {
            let mut below = walk(&b.lhs, uses);
            below.extend(walk(&b.rhs, uses));
            if let Some(m) = &b.modifier {
                if let Some(matching) = &m.matching {
                    uses.groupings.push((labels_of(matching), below.clone()));
                }
                if let VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) =
                    &m.card
                {
                    uses.groupings.push((l.labels.clone(), below.clone()));
                }
            }
            below
        }
        Expr::Unary(u) => walk(&u.expr, uses),
        Expr::Paren(p) => walk(&p.expr, uses),
        Expr::Subquery(s) => walk(&s.expr, uses),
        Expr::Call(c) => {
            if c.func.name == "histogram_quantile"
                && !c.args.args.get(1).is_some_and(|a| keeps_le(a))
            {
                uses.problems
                    .push("histogram_quantile over series without le".into());
            }
            let mut below = BTreeSet::new();
            for a in &c.args.args {
                below.extend(walk(a, uses));
            }
            below
        }
        Expr::VectorSelector(vs) => selector(vs, uses),
        Expr::MatrixSelector(ms) => selector(&ms.vs, uses),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => BTreeSet::new(),
    }
}

/// Whether `e` still has the `le` label: an aggregation must keep it.
fn keeps_le(e: &Expr) -> bool {
    match e {
        Expr::Paren(p) => keeps_le(&p.expr),
        Expr::Aggregate(a) => match &a.modifier {
            Some(LabelModifier::Include(l)) => l.labels.iter().any(|l| l == "le"),
            Some(LabelModifier::Exclude(l)) => {
                !l.labels.iter().any(|l| l == "le") && keeps_le(&a.expr)
            }
            None => false,
        },
        Expr::Call(c) => c.args.args.iter().any(|a| keeps_le(a)),
        Expr::Binary(b) => keeps_le(&b.lhs) || keeps_le(&b.rhs),
        Expr::VectorSelector(vs) => name_of(vs).is_some_and(|n| n.ends_with("_bucket")),
        Expr::MatrixSelector(ms) => name_of(&ms.vs).is_some_and(|n| n.ends_with("_bucket")),
        _ => false,
    }
}

fn selector(vs: &VectorSelector, uses: &mut Uses) -> BTreeSet<String> {
    uses.selectors.push(vs.clone());
    name_of(vs).into_iter().collect()
}

fn name_of(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone())
    })
}

/// The literal label values a matcher names: its value for `=`, the
/// alternatives of a plain `a|b` regex; none when a variable is in it.
fn literal_values(m: &Matcher) -> Vec<String> {
    if m.value.contains(VAR) {
        return Vec::new();
    }
    match &m.op {
        MatchOp::Equal => vec![m.value.clone()],
        MatchOp::Re(_)
            if m.value.split('|').all(|w| {
                !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) =>
        {
            m.value.split('|').map(str::to_owned).collect()
        }
        _ => Vec::new(),
    }
}

/// Problems of one query against what the proxy serves.
fn check(
    q: &Query,
    vars: &BTreeSet<String>,
    exposed: &Exposed,
    histograms: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut say = |p: String| problems.push(format!("{}: {p}  [{}]", q.at, q.expr));
    let expanded = match expand(&q.expr, vars) {
        Ok(e) => e,
        Err(e) => {
            say(e);
            return problems;
        }
    };
    let expr = match promql_parser::parser::parse(&expanded) {
        Ok(e) => e,
        Err(e) => {
            say(format!("not PromQL: {e}"));
            return problems;
        }
    };
    let mut uses = Uses::default();
    let below = walk(&expr, &mut uses);
    if !q.labels.is_empty() {
        uses.groupings.push((q.labels.clone(), below));
    }
    let has_label = |metric: &str, label: &str| {
        TARGET_LABELS.contains(&label)
            || exposed.get(metric).is_some_and(|ls| ls.contains_key(label))
    };
    for vs in &uses.selectors {
        let Some(name) = name_of(vs) else {
            say("a selector without a metric name".into());
            continue;
        };
        let Some(labels) = exposed.get(&name) else {
            if histograms.contains(&name) {
                say(format!(
                    "{name} is a histogram: select {name}_bucket, _sum or _count"
                ));
            } else {
                say(format!("no metric {name} on /metrics"));
            }
            continue;
        };
        for m in vs.matchers.matchers.iter().filter(|m| m.name != "__name__") {
            if !has_label(&name, &m.name) {
                say(format!("{name} has no label {}", m.name));
                continue;
            }
            for v in literal_values(m) {
                if !TARGET_LABELS.contains(&m.name.as_str())
                    && !labels.get(&m.name).is_some_and(|vs| vs.contains(&v))
                {
                    say(format!("{name} never has {}=\"{v}\"", m.name));
                }
            }
        }
    }
    for p in &uses.problems {
        say(p.clone());
    }
    for (labels, metrics) in &uses.groupings {
        for l in labels {
            // A metric that does not exist was reported above.
            let known = metrics.iter().filter(|m| exposed.contains_key(*m));
            for m in known.filter(|m| !has_label(m, l)) {
                say(format!("groups by {l}, which {m} does not have"));
            }
        }
    }
    problems
}

/// Series name -> labels -> values of a scrape, histograms expanded into
/// their `_bucket` series (with `le`); and the histograms' names.
fn exposed(body: &str) -> (Exposed, BTreeSet<String>) {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut out = Exposed::new();
    let mut histograms = BTreeSet::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let name = match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                histograms.insert(s.metric.clone());
                for b in buckets {
                    let le = if b.less_than.is_infinite() {
                        "+Inf".to_owned()
                    } else {
                        format!("{}", b.less_than)
                    };
                    labels.push(("le".into(), le));
                }
                format!("{}_bucket", s.metric)
            }
            _ => s.metric.clone(),
        };
        let series = out.entry(name).or_default();
        for (k, v) in labels {
            series.entry(k).or_default().insert(v);
        }
    }
    (out, histograms)
}

#[tokio::test]
async fn the_dashboard_queries_only_what_the_proxy_serves() {
    let dash = dashboard();
    let (queries, vars) = queries(&dash);
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // A real proxy after real traffic: queries, a transaction, named
    // statements, a pin, a refused login.
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let admin = free_port().expect("port");
    let config = pg.config(&["acme"], 2, "max_prepared_statements = 2")
        + &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n");
    let proxy = TestProxy::start(&config).await;
    wait_healthy(admin).await;
    let client = proxy.connect("acme").await;
    for i in 0..5i32 {
        client.query("SELECT $1::int", &[&i]).await.expect("select");
    }
    client
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .expect("transaction");
    client
        .simple_query("SELECT pg_advisory_lock(7); SELECT pg_advisory_unlock(7)")
        .await
        .expect("pin");
    proxy
        .try_connect(&proxy.conn_str("app.acme", "wrong-password", "acme"))
        .await
        .expect_err("wrong password refused");
    let (status, body) = http(
        admin,
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    drop(client);
    proxy.stop().await.expect("stops");

    let (exposed, histograms) = exposed(&body);
    let problems: Vec<String> = queries
        .iter()
        .flat_map(|q| check(q, &vars, &exposed, &histograms))
        .collect();
    assert!(
        problems.is_empty(),
        "the dashboard names what /metrics does not serve:\n{}",
        problems.join("\n")
    );
    // Every variable is used.
    for v in vars.iter().filter(|v| *v != "datasource") {
        assert!(
            queries.iter().any(|q| q.expr.contains(&format!("${v}"))),
            "variable {v} is never used"
        );
    }
    // What the dashboard leaves out, for the record.
    let used: BTreeSet<String> = queries
        .iter()
        .filter_map(|q| expand(&q.expr, &vars).ok())
        .filter_map(|e| promql_parser::parser::parse(&e).ok())
        .flat_map(|e| walk(&e, &mut Uses::default()))
        .collect();
    let unused: Vec<&String> = exposed.keys().filter(|k| !used.contains(*k)).collect();
    eprintln!(
        "{} queries checked; series not on the dashboard: {unused:?}",
        queries.len()
    );
}
