"""The Prometheus rules under deploy/ (issues 3, 15): they parse, they name only metrics the services
really export, and they carry the monitor's own rules with the same names, severities and
thresholds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from services.monitor.alerts import RULES
from tests.support import ROOT, Service, Stack, eventually

RULE_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus makes itself for every target, not exported by anyone.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
METRIC = re.compile(r"\b(atendimento_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*\()")
DURATION = re.compile(r"^\d+[smhdwy]$")
UNIT_SCALE = {"%": 0.01, "ms": 0.001, "s": 1.0, "": 1.0}


def rule_files() -> list[tuple[Path, list[dict[str, Any]]]]:
    """The plain rule file, and the rules of any Kubernetes PrometheusRule under deploy/."""
    found = [(RULE_FILE, yaml.safe_load(RULE_FILE.read_text())["groups"])]
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "PrometheusRule":
                found.append((path, document["spec"]["groups"]))
    return found


def alerting_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rule_file_parses() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "rules", str(RULE_FILE)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    # The schema promtool checks, checked here too (promtool comes with Debian's `prometheus`).
    for path, groups in rule_files():
        assert groups and all(set(group) <= {"name", "rules", "interval", "limit"} for group in groups), path
        names = [rule["alert"] for rule in alerting_rules(groups)]
        assert len(names) == len(set(names)), f"{path}: duplicate alert names"
        for rule in alerting_rules(groups):
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule
            assert "for" not in rule or DURATION.match(str(rule["for"])), rule
            assert rule["labels"]["severity"] in ("critical", "warning"), rule
            assert rule["annotations"]["summary"], rule


def test_the_monitor_rules_are_the_prometheus_rules() -> None:
    prometheus = {rule["alert"]: rule for rule in alerting_rules(rule_files()[0][1])}
    for rule in RULES:
        assert rule.name in prometheus, f"{rule.name} is evaluated by the monitor but not shipped to Prometheus"
        shipped = prometheus[rule.name]
        assert shipped["labels"]["severity"] == rule.severity, rule.name
        if isinstance(rule.threshold, (int, float)):
            scaled = float(rule.threshold) * UNIT_SCALE[rule.unit]
            assert re.search(rf"[<>=]=?\s*{scaled:g}\b", shipped["expr"]), (rule.name, scaled, shipped["expr"])


async def test_every_metric_the_rules_name_is_exported(stack: Stack, http: aiohttp.ClientSession) -> None:
    named = {
        re.sub(r"_bucket$", "", match.group(1))
        for _, groups in rule_files()
        for rule in alerting_rules(groups)
        for match in METRIC.finditer(rule["expr"])
    } - SYNTHETIC
    assert named, "the rules name no metric"
    monitor = await stack.start("monitor", ALERT_INTERVAL_SECONDS="0.2")
    worker = await stack.start("worker")
    gateway = await stack.start("gateway")

    async def families(service: Service, wanted: str) -> set[str] | None:
        async with http.get(service.url + "/metrics") as response:
            text = await response.text()
        found = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        return found if wanted in found else None

    # System state is the monitor's; traffic, errors and latency the workers' and gateways'.
    exported = await eventually(lambda: families(monitor, "atendimento_workers_alive"), what="the monitor's gauges")
    exported |= await eventually(lambda: families(worker, "atendimento_reply_latency_seconds"), what="worker metrics")
    exported |= await eventually(lambda: families(gateway, "atendimento_errors_total"), what="gateway metrics")
    assert named <= exported, named - exported
