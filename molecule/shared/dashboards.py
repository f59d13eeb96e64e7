"""Grafana dashboards as tests see them: lint rules and every panel's PromQL run for real.

Grafana itself cannot be installed on these machines, so its dashboards are checked two
ways. `lint(dashboard)` applies the rules of grafana/dashboard-linter that matter here
(ported): a templated Prometheus datasource used by every panel, `$__rate_interval` in
every range function, a `job` matcher and `instance=~"$instance"` in every selector, a
unit, a title and a description on every panel. The overview covers several exporters,
so the job is a fixed matcher per panel instead of the linter's `$job` variable.
`run_queries(prometheus_url, ...)` runs every panel's expression against a real
Prometheus with Grafana's variables filled in and reports which returned no series: a
panel whose query silently shows nothing (a renamed metric, a wrong label) fails.
Reused by molecule/monitoring and by the stack scenario.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "roles" / "monitoring" / "files" / "dashboards"

# What Grafana would put in place of its variables, for Prometheus' query API.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "${instance}": ".+",
    "$instance": ".+",
}
RANGE_FUNCTIONS = (
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
)
# Metrics whose source is not the job named in the selector: node-exporter's textfile
# collector serves what the backup jobs write.
SOURCES_BY_PREFIX = {
    "grimbots_pgbackrest_": "pgbackrest",
    "grimbots_restore_drill_": "pgbackrest",
}
PANEL_TYPES_WITH_UNITS = {"timeseries", "stat", "gauge", "bargauge"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"

    @property
    def sources(self) -> set[str]:
        """The jobs (or other sources) whose data this query needs; empty: any will do."""
        found = set()
        for metric, matchers in selectors(self.expr):
            prefix = next((p for p in SOURCES_BY_PREFIX if metric.startswith(p)), None)
            job = re.search(r'\bjob\s*=\s*"([^"]+)"', matchers)
            if prefix:
                found.add(SOURCES_BY_PREFIX[prefix])
            elif job:
                found.add(job.group(1))
        return found

    def promql(self) -> str:
        expr = self.expr
        for name in sorted(VARIABLES, key=len, reverse=True):
            expr = expr.replace(name, VARIABLES[name])
        return expr


def load(paths: Iterable[Path] | None = None) -> dict[str, dict]:
    """File name -> dashboard, for every dashboard the role provisions."""
    paths = sorted(DASHBOARDS.glob("*.json")) if paths is None else paths
    return {path.name: json.loads(path.read_text()) for path in paths}


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(dashboards: dict[str, dict]) -> list[Query]:
    found = []
    for dashboard in dashboards.values():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append(
                        Query(dashboard["title"], panel["title"], target["refId"], target["expr"])
                    )
    return found


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers) of every `name{...}` selector in the expression."""
    return re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr)


def bare_selectors(expr: str) -> list[str]:
    """Metric names used without {...} (they could carry no job or instance matcher)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)
    stripped = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped
    )
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    names = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{|\()?", stripped)
    return [n for n, after in names if not after and n.lower() not in PROMQL_WORDS]


def lint(dashboard: dict) -> list[str]:
    """Problems found, one line each (empty: clean)."""
    problems = []
    title = dashboard.get("title", "?")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append(f"{title}: no templated Prometheus datasource variable named 'datasource'")
    instance = variables.get("instance", {})
    if instance.get("type") != "query" or not instance.get("includeAll"):
        problems.append(f"{title}: no 'instance' query variable with an All option")
    if not dashboard.get("uid"):
        problems.append(f"{title}: no uid (provisioned dashboards need a stable one)")
    ids = [p.get("id") for p in dashboard.get("panels", [])] + [
        p.get("id") for p in panels(dashboard) if p not in dashboard.get("panels", [])
    ]
    if len(ids) != len(set(ids)):
        problems.append(f"{title}: panel ids are not unique")
    for panel in panels(dashboard):
        where = f"{title} / {panel.get('title') or panel.get('id')}"
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"{where}: needs a title and a description")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not the ${{datasource}} variable")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if panel.get("type") in PANEL_TYPES_WITH_UNITS and not unit:
            problems.append(f"{where}: no unit")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            ref = f"{where} / {target.get('refId')}"
            if target.get("datasource", {}).get("uid", "${datasource}") != "${datasource}":
                problems.append(f"{ref}: target datasource is not ${{datasource}}")
            for function in RANGE_FUNCTIONS:
                windows = re.findall(rf"\b{function}\s*\([^\[]*\[([^\]]*)\]", expr)
                for window in (w for w in windows if w != "$__rate_interval"):
                    problems.append(f"{ref}: {function}() over [{window}], not $__rate_interval")
            for metric, matchers in selectors(expr):
                if not re.search(r"\bjob\s*=~?\s*\"", matchers):
                    problems.append(f"{ref}: {metric} has no job matcher")
                if 'instance=~"$instance"' not in matchers.replace(" ", ""):
                    problems.append(f'{ref}: {metric} has no instance=~"$instance" matcher')
            for metric in bare_selectors(expr):
                problems.append(f"{ref}: {metric} is used without matchers")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"{ref}: unbalanced brackets")
    return problems


@dataclass(frozen=True)
class Result:
    query: Query
    series: int
    error: str | None = None


def run_queries(
    prometheus_url: str, selected: Iterable[Query], timeout: float = 10
) -> list[Result]:
    """Run each query (instant, now) against Prometheus; count the series it returned."""
    results = []
    for query in selected:
        data = urllib.parse.urlencode({"query": query.promql()}).encode()
        request = urllib.request.Request(f"{prometheus_url.rstrip('/')}/api/v1/query", data=data)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # a 400 names the PromQL syntax error
            results.append(Result(query, 0, exc.read().decode(errors="replace")[:300]))
            continue
        if body.get("status") != "success":
            results.append(Result(query, 0, body.get("error", "query failed")))
            continue
        results.append(Result(query, len(body["data"]["result"])))
    return results


def with_sources(all_queries: Iterable[Query], available: set[str]) -> list[Query]:
    """The queries whose every source (job) exists in this deployment."""
    return [q for q in all_queries if q.sources <= available]
