//! PrometheusRule checks: promtool on the rules and their unit tests, and the metric names rules and dashboards query.
//!
//! promtool only reads plain rule files, so every PrometheusRule in `gitops/platform/monitoring/*.yaml` is
//! written as `<scratch>/<metadata.name>.rules.yaml`, and `tests/*.yaml` are copied beside them: a test's
//! `rule_files: [quilla.rules.yaml]` resolves relative to the test file, i.e. inside the scratch directory.
//!
//! The metric names the rules and dashboards query (read from each expression's AST, parsed by the
//! promql-parser crate) are kept in `queried-metrics.txt`, which the
//! transaction-api test `metrics_catalog` compares with what the running services export. `check` fails
//! when that list is stale; `QUILLA_BLESS=1` rewrites it instead.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use platform::testkit::TempDir;
use serde_json::Value;

/// Where the PrometheusRules, `dashboards/` and `tests/` live, relative to the workspace root.
const MONITORING_DIR: &str = "gitops/platform/monitoring";
/// The generated list of queried metric names, relative to the monitoring directory.
const QUERIED_LIST: &str = "queried-metrics.txt";

/// Grafana's interval variables, interpolated as durations before a dashboard's query is parsed (its
/// other variables appear only inside label matchers' strings, which the parser takes as they are).
const GRAFANA_INTERVALS: &[&str] =
    &["$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}", "$__range", "${__range}"];

/// Runs `promtool check rules` and `promtool test rules`, then checks `queried-metrics.txt` is current.
pub fn check(root: &Path) -> Result<()> {
    let dir = root.join(MONITORING_DIR);
    check_dir(&dir)?;
    check_queried_list(&dir, &queried_metrics(root)?)
}

/// Every metric name the rules (recorded names and `up` aside) and the dashboards query, histogram
/// series (`_bucket`, `_sum`, `_count`) under their base name.
pub fn queried_metrics(root: &Path) -> Result<BTreeSet<String>> {
    queried_in(&root.join(MONITORING_DIR))
}

/// The metric names a PromQL expression selects (Grafana's interval variables allowed), from the
/// promql-parser crate's AST: every vector selector's name and `__name__="…"` matcher. An expression
/// that does not parse is an error naming it.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>> {
    let interpolated = GRAFANA_INTERVALS.iter().fold(expr.to_owned(), |text, variable| text.replace(variable, "5m"));
    let ast = promql_parser::parser::parse(&interpolated).map_err(|error| anyhow::anyhow!("`{expr}`: {error}"))?;
    let mut names = MetricNames(BTreeSet::new());
    promql_parser::util::walk_expr(&mut names, &ast).map_err(|never| match never {})?;
    Ok(names.0)
}

/// Collects the metric names of the selectors it visits.
struct MetricNames(BTreeSet<String>);

impl promql_parser::util::ExprVisitor for MetricNames {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, Self::Error> {
        use promql_parser::parser::Expr;
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(matrix) => &matrix.vs,
            _ => return Ok(true),
        };
        self.0.extend(selector.name.clone());
        let by_name = (selector.matchers.matchers.iter())
            .filter(|m| m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal));
        self.0.extend(by_name.map(|m| m.value.clone()));
        Ok(true)
    }
}

/// A PrometheusRule found in the monitoring directory.
#[derive(Debug)]
struct RuleObject {
    file: PathBuf,
    name: String,
    spec: Value,
}

/// Every PrometheusRule in the top-level `*.yaml` files of `dir` (multi-document files included).
fn prometheus_rules(dir: &Path) -> Result<Vec<RuleObject>> {
    let mut rules = Vec::new();
    for file in files_with_extension(dir, "yaml")? {
        let text = fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        for super::Rendered { object, .. } in super::parse_documents(&file.display().to_string(), &text)? {
            if object["kind"] != "PrometheusRule" {
                continue;
            }
            let Some(name) = object["metadata"]["name"].as_str() else {
                bail!("{}: a PrometheusRule without metadata.name", file.display());
            };
            rules.push(RuleObject { file: file.clone(), name: name.to_owned(), spec: object["spec"].clone() });
        }
    }
    Ok(rules)
}

/// The files of `dir` (not its subdirectories) named `*.<extension>`, sorted; none if `dir` is missing.
fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    super::sorted_entries(dir, |path| path.is_file() && path.extension().is_some_and(|e| e == extension))
}

/// promtool on the PrometheusRules of `dir` and on the unit tests in `dir/tests`.
fn check_dir(dir: &Path) -> Result<()> {
    let rules = prometheus_rules(dir)?;
    if rules.is_empty() {
        bail!("no PrometheusRule found in {}/*.yaml", dir.display());
    }
    let scratch = TempDir::try_new("promtool")?;
    let mut rule_files = Vec::new();
    for rule in &rules {
        let target = scratch.path().join(format!("{}.rules.yaml", rule.name));
        if rule_files.contains(&target) {
            bail!("{}: a second PrometheusRule named {}", rule.file.display(), rule.name);
        }
        // JSON is YAML, and serde_json writes its own numbers faithfully.
        fs::write(&target, serde_json::to_string_pretty(&rule.spec)?)?;
        rule_files.push(target);
    }
    promtool(scratch.path(), "check", &rule_files).context("promtool check rules: a PrometheusRule is invalid")?;

    let mut tests = Vec::new();
    for test in files_with_extension(&dir.join("tests"), "yaml")? {
        let Some(file_name) = test.file_name() else { continue };
        let copy = scratch.path().join(file_name);
        fs::copy(&test, &copy).with_context(|| format!("copy {}", test.display()))?;
        tests.push(copy);
    }
    if !tests.is_empty() {
        promtool(scratch.path(), "test", &tests).context("promtool test rules: a rule unit test failed")?;
    }
    Ok(())
}

/// `promtool <action> rules <files>` in `dir`, failing with promtool's output.
fn promtool(dir: &Path, action: &str, files: &[PathBuf]) -> Result<()> {
    let output = Command::new("promtool")
        .current_dir(dir)
        .args([action, "rules"])
        .args(files)
        .output()
        .context("run promtool (Debian: apt-get install prometheus)")?;
    if !output.status.success() {
        bail!(
            "promtool {action} rules failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn queried_in(dir: &Path) -> Result<BTreeSet<String>> {
    let mut recorded = BTreeSet::from(["up".to_owned()]);
    let mut exprs = Vec::new();
    for rule in prometheus_rules(dir)? {
        for group in rule.spec["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                if let Some(name) = rule["record"].as_str() {
                    recorded.insert(name.to_owned());
                }
                match &rule["expr"] {
                    Value::String(expr) => exprs.push(expr.clone()),
                    other => exprs.push(other.to_string()),
                }
            }
        }
    }
    for file in files_with_extension(&dir.join("dashboards"), "json")? {
        let text = fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let dashboard: Value = serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))?;
        panel_exprs(&dashboard["panels"], &mut exprs);
    }
    let mut names = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr)? {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            if !recorded.contains(base) {
                names.insert(base.to_owned());
            }
        }
    }
    Ok(names)
}

/// `targets[].expr` of every panel, including the panels nested in (collapsed) rows.
fn panel_exprs(panels: &Value, exprs: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
        panel_exprs(&panel["panels"], exprs);
    }
}

/// The content `queried-metrics.txt` must have.
fn queried_list(names: &BTreeSet<String>) -> String {
    let mut text = String::from(
        "# Generated by crates/xtask/src/validate/prometheus.rs (QUILLA_BLESS=1 cargo xtask validate): the metrics\n\
         # the rules and dashboards here query; crates/transaction-api/tests/metrics_catalog.rs checks they are exported.\n",
    );
    for name in names {
        text.push_str(name);
        text.push('\n');
    }
    text
}

fn check_queried_list(dir: &Path, names: &BTreeSet<String>) -> Result<()> {
    let path = dir.join(QUERIED_LIST);
    let expected = queried_list(names);
    if fs::read_to_string(&path).ok().as_deref() == Some(expected.as_str()) {
        return Ok(());
    }
    if std::env::var_os("QUILLA_BLESS").is_some() {
        fs::write(&path, &expected).with_context(|| format!("write {}", path.display()))?;
        return Ok(());
    }
    bail!("{} is stale; rerun with QUILLA_BLESS=1 to rewrite it. It should read:\n{expected}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).expect("valid PromQL").into_iter().collect()
    }

    use crate::workspace_root;

    #[test]
    fn names_in_an_error_ratio() {
        let expr = r#"sum by (namespace, job) (rate(http_requests_total{status=~"5..", route!~"/health|/ready"}[30m]))
            / sum by (namespace, job) (rate(http_requests_total{route!~"/health|/ready"}[30m]))"#;
        assert_eq!(names(expr), ["http_requests_total"]);
    }

    #[test]
    fn names_in_a_histogram_quantile() {
        let expr = "histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket[5m])))";
        assert_eq!(names(expr), ["http_request_duration_seconds_bucket"]);
    }

    #[test]
    fn names_around_vector_matching_and_trailing_grouping() {
        let expr = "min by (namespace, job) (deriv(outbox_pending_events[15m])) > 0 \
                    and on (namespace, job) max by (namespace, job) (outbox_dead_letter_events) > 100";
        assert_eq!(names(expr), ["outbox_dead_letter_events", "outbox_pending_events"]);
        let expr = "sum(rate(a_total[5m])) by (job) / ignoring(code) group_left(instance) b_total offset 1h";
        assert_eq!(names(expr), ["a_total", "b_total"]);
        let expr = "SUM WITHOUT (pod) (c_total) UNLESS d_total == BOOL 1e3";
        assert_eq!(names(expr), ["c_total", "d_total"]);
    }

    #[test]
    fn names_with_grafana_variables_strings_subqueries_and_comments() {
        let expr = r#"rate(x_total{job=~"$job", le="}"}[$__rate_interval]) / rate(y_total[${__interval}])"#;
        assert_eq!(names(expr), ["x_total", "y_total"]);
        let expr = r#"label_replace(webhook_events_total, "dst", "$1 (sum", "src", "(.*)")"#;
        assert_eq!(names(expr), ["webhook_events_total"]);
        let expr = "max_over_time(deriv(foo[5m])[30m:1m] @ end()) # and not bar\n- .5 * baz";
        assert_eq!(names(expr), ["baz", "foo"]);
        assert_eq!(names(r#"{__name__="hidden"} > 0"#), ["hidden"]);
        assert!(names(r#"{__name__=~"hid.*"} > 0"#).is_empty());
    }

    #[test]
    fn an_expression_that_does_not_parse_is_an_error_naming_it() {
        let error = metric_names("rate(x_total[5m] > 0").expect_err("unbalanced").to_string();
        assert!(error.starts_with("`rate(x_total[5m] > 0`: "), "{error}");
        // A Grafana variable other than an interval stands where PromQL allows none.
        assert!(metric_names("x_total * $factor").is_err());
    }

    #[test]
    fn queried_metrics_drop_recorded_names_and_up_and_fold_histograms() {
        let scratch = TempDir::new("queried");
        let dir = scratch.path();
        fs::write(
            dir.join("rules.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {expr: ignored_total}\n---\n\
             apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\nspec:\n  groups:\n\
             \x20   - name: g\n      rules:\n        - record: job:a:rate5m\n          expr: sum(rate(a_total[5m]))\n\
             \x20       - alert: A\n          expr: job:a:rate5m > 1 and up == 1\n",
        )
        .expect("write rules");
        fs::create_dir(dir.join("dashboards")).expect("mkdir");
        let dashboard = serde_json::json!({"panels": [
            {"targets": [{"expr": "histogram_quantile(0.9, rate(lat_seconds_bucket[1m]))"}]},
            {"type": "row", "panels": [{"targets": [{"expr": "rate(lat_seconds_count[1m]) + job:a:rate5m"}]}]},
        ]});
        fs::write(dir.join("dashboards/d.json"), dashboard.to_string()).expect("write dashboard");
        let found: Vec<String> = queried_in(dir).expect("queried").into_iter().collect();
        assert_eq!(found, ["a_total", "lat_seconds"]);
    }

    #[test]
    fn the_repository_rules_pass_promtool_and_the_queried_list_is_current() {
        check(&workspace_root()).expect("gitops/platform/monitoring is valid");
        assert!(queried_metrics(&workspace_root()).expect("queried").contains("outbox_pending_events"));
    }

    fn rule_dir(expr: &str) -> TempDir {
        let scratch = TempDir::new("rules");
        let rule = format!(
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: t\nspec:\n  groups:\n\
             \x20   - name: g\n      rules:\n        - alert: Broken\n          expr: '{expr}'\n"
        );
        fs::write(scratch.path().join("rule.yaml"), rule).expect("write rule");
        scratch
    }

    #[test]
    fn check_rejects_invalid_promql() {
        let scratch = rule_dir("rate(http_requests_total[5m] > 0");
        let error = format!("{:#}", check_dir(scratch.path()).expect_err("invalid PromQL is rejected"));
        assert!(error.contains("promtool check rules"), "{error}");
        // The same rule with a valid expression passes: the failure above is the PromQL's.
        let valid = rule_dir("rate(http_requests_total[5m]) > 0");
        check_dir(valid.path()).expect("valid rule passes");
    }

    #[test]
    fn check_rejects_a_failing_rule_unit_test() {
        let scratch = rule_dir("vector(1) > 0");
        fs::create_dir(scratch.path().join("tests")).expect("mkdir");
        let test = "rule_files: [t.rules.yaml]\ntests:\n  - interval: 1m\n    alert_rule_test:\n\
                    \x20     - eval_time: 1m\n        alertname: Broken\n        exp_alerts: []\n";
        fs::write(scratch.path().join("tests/t.yaml"), test).expect("write test");
        let error = format!("{:#}", check_dir(scratch.path()).expect_err("the alert fires, the test says it does not"));
        assert!(error.contains("promtool test rules"), "{error}");
        let passing = test.replace("exp_alerts: []", "exp_alerts: [{exp_labels: {}}]");
        fs::write(scratch.path().join("tests/t.yaml"), passing).expect("write test");
        check_dir(scratch.path()).expect("the corrected test passes");
    }
}
