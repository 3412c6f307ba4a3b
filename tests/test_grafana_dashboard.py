"""The Grafana dashboard and the compose Prometheus (issue 15): the JSON loads, every PromQL
expression in it parses and names only metrics the services export, compose provisions it next to
a Prometheus that scrapes the three services, and Kubernetes ships it to Grafana's sidecar."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT
from tests.support.metrics import metric_names

DASHBOARD = ROOT / "deploy" / "k8s" / "base" / "grafana" / "ia-atendimento-bot.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Dashboard variables, replaced by Grafana before the query is sent.
VARIABLES = {"$namespace": ".*", "${datasource}": "prometheus"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(re.sub(r"^label_values\((\w+), \w+\)$", r"\1", variable["query"]["query"]))
    return [substitute(query) for query in queries]


def substitute(query: str) -> str:
    for name, value in VARIABLES.items():
        query = query.replace(name, value)
    return query


def exported_families() -> set[str]:
    """Every metric name our code defines (shared/metrics.py, the monitor's collector) or that
    prometheus_client's process collector exports."""
    sources = [
        ROOT / "shared" / "metrics.py",
        ROOT / "services" / "monitor" / "gauges.py",
        ROOT / "services" / "monitor" / "outcomes.py",
    ]
    names = {m for path in sources for m in re.findall(r'"(atendimento_[a-z0-9_]+)"', path.read_text())}
    names |= {
        m.replace("{name}", kind)
        for path in sources
        for m in re.findall(r'f"(atendimento_\{name\}_alive)"', path.read_text())
        for kind in ("workers", "gateways")
    }
    return names | {"process_resident_memory_bytes", "process_start_time_seconds"}


def test_the_dashboard_loads_and_covers_the_areas() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ia-atendimento-bot" and dashboard["title"]
    rows = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert {"Traffic", "Latency", "Errors", "Queue", "LLM", "Handoffs", "Outcomes"} <= rows
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_expression_parses_and_names_exported_metrics() -> None:
    exported = exported_families()
    queries = expressions()
    assert len(queries) > 15
    percentiles = 0
    for query in queries:
        names = metric_names(query)  # raises on a parse error
        assert names, query
        for name in names:
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert name in exported or family in exported, f"{name} is not exported: {query}"
        percentiles += "histogram_quantile" in query and "_bucket" in query
    assert percentiles >= 5, "latency percentiles come from the histograms"


def test_outcomes_and_ratings_have_their_panels() -> None:
    """Issue 22: conversations by outcome (and the share the bot contained), ratings by score and
    their average by who handled the conversation."""
    named = [metric_names(query) for query in expressions()]
    assert sum("atendimento_conversations_total" in names for names in named) >= 2
    assert sum("atendimento_csat_responses_total" in names for names in named) >= 2


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    """promtool has no "parse this expression" command: each one becomes a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/ensure-test-tools.sh installs it)")
    rules = [{"record": f"dashboard:expression_{index}", "expr": query} for index, query in enumerate(expressions())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    config = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS)], capture_output=True, text=True, check=False
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_compose_scrapes_the_services_and_provisions_the_dashboard() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ia-atendimento-bot"  # the job the alert rules select
    targets = {(entry["names"][0], entry["port"]) for entry in job["dns_sd_configs"]}
    assert targets == {("gateway", 8080), ("worker", 8081), ("monitor", 8082)}
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    grafana = services["grafana"]["volumes"]
    assert "./deploy/k8s/base/grafana:/var/lib/grafana/dashboards:ro" in grafana
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/ia-atendimento-bot.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert source["datasources"][0]["uid"] == "prometheus"


def test_kubernetes_ships_the_dashboard_to_the_grafana_sidecar() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "atendimento-grafana-dashboard"]
    assert generator["files"] == ["grafana/ia-atendimento-bot.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
