"""deploy/ and the compose `monitoring` profile, checked without a cluster or a registry.

- deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas bundled with `kubernetes-validate`
  (strict: unknown fields fail), then the engine's needs: probes on the health port, resources,
  non-root, only real `SELDON_*` settings;
- deploy/grafana/dataflow.json: a dashboard whose queries name only metrics the engine exports
  (dataflow/metrics.py) and group by its labels;
- the Prometheus and Grafana files of the compose stack point at the engine and at each other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dataflow.settings import Settings
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
DASHBOARD = REPO / "deploy" / "grafana" / "dataflow.json"
MONITORING = REPO / "compose" / "monitoring"
COMPOSE = REPO / "compose" / "docker-compose.yaml"
METRICS_SOURCE = REPO / "dataflow" / "metrics.py"
K8S_VERSION = "1.30"
STEP_LABELS = {"pipeline", "version", "step"}


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path, doc))
    return found


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


def engine_container() -> dict[str, Any]:
    [container] = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def exported_metrics() -> set[str]:
    """The series names the engine's collector exposes (a counter gets `_total`, a histogram
    `_bucket`, `_sum`, `_count`)."""
    source = METRICS_SOURCE.read_text()
    names: set[str] = set()
    for kind, name in re.findall(r'(Counter|Gauge|Histogram)MetricFamily\(\s*"(\w+)"', source):
        if kind == "Counter":
            names.add(f"{name}_total")
        elif kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_queries(data: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in data["panels"] for target in panel["targets"]]


def query_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(dataflow_\w+)", expr))


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize(("path", "doc"), manifests(), ids=lambda v: getattr(v, "name", ""))
def test_manifest_follows_the_kubernetes_schema(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    broken = by_kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_probes_are_on_the_health_port() -> None:
    container = engine_container()
    env = container_env(container)
    [port] = container["ports"]
    assert port["containerPort"] == int(env["SELDON_HEALTH_SERVER_PORT"])
    assert env["SELDON_HEALTH_SERVER_HOST"] == "0.0.0.0"  # the kubelet probes from outside
    for probe, path in (
        ("startupProbe", "/startup"),
        ("livenessProbe", "/live"),
        ("readinessProbe", "/ready"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in (port["name"], port["containerPort"])


def test_service_selects_the_engine_and_exposes_the_health_port() -> None:
    deployment, service = by_kind("Deployment"), by_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == engine_container()["ports"][0]["name"]


def test_engine_runs_as_non_root_with_resources_and_a_drain() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (compose/Dockerfile)
    container = engine_container()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    shutdown = Settings.model_fields["shutdown_timeout_seconds"].default
    assert pod["terminationGracePeriodSeconds"] > shutdown


def test_environment_names_only_real_settings() -> None:
    env = container_env(engine_container())
    fields = Settings.model_fields
    assert all(name.startswith("SELDON_") for name in env)
    unknown = [name for name in env if name.removeprefix("SELDON_").lower() not in fields]
    assert unknown == []
    for needed in (
        "SELDON_KAFKA_BOOTSTRAP_SERVERS",
        "SELDON_UPSTREAM_HOST",
        "SELDON_UPSTREAM_PORT",
        "SELDON_POD_NAMESPACE",
    ):
        assert needed in env, needed
    assert env["SELDON_UPSTREAM_PORT"] == "9008"  # the scheduler's Chainer (dataflow) port


# --------------------------------------------------------------------------- Grafana


def test_dashboard_queries_name_exported_metrics_only() -> None:
    exported = exported_metrics()
    assert "dataflow_step_records_in_total" in exported  # the parsing finds the families
    used: set[str] = set()
    for expr in dashboard_queries(dashboard()):
        used |= query_metrics(expr)
    assert used <= exported, used - exported
    for needed in (
        "dataflow_step_records_in_total",
        "dataflow_step_records_out_total",
        "dataflow_step_records_filtered_total",
        "dataflow_step_records_error_total",
        "dataflow_consumer_lag",
        "dataflow_step_latency_seconds_bucket",
        "dataflow_step_state_bytes",
        "dataflow_scheduler_connected",
        "dataflow_pipelines",
    ):
        assert needed in used, needed


def test_an_unknown_metric_is_detected() -> None:
    assert query_metrics("rate(dataflow_step_records_ins_total[1m])") - exported_metrics()


def test_dashboard_groups_by_step_name_and_has_both_quantiles() -> None:
    data = dashboard()
    queries = dashboard_queries(data)
    step_queries = [q for q in queries if "dataflow_step_" in q or "dataflow_consumer_" in q]
    for query in step_queries:
        groupings = re.findall(r"by \(([^)]*)\)", query)
        assert all(f'{label}=~"${label}"' in query for label in STEP_LABELS), query
        if not groupings:  # a total over the selected steps
            assert query.startswith("sum(rate("), query
            continue
        [grouping] = groupings
        labels = {label.strip() for label in grouping.split(",")}
        assert STEP_LABELS <= labels <= STEP_LABELS | {"le"}, query
        assert all(f'{label}=~"${label}"' in query for label in STEP_LABELS), query
    quantiles = [q for q in queries if "histogram_quantile" in q]
    assert {q.split(",")[0] for q in quantiles} == {
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    }
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", *STEP_LABELS} <= variables


def test_dashboard_layout_is_well_formed() -> None:
    data = dashboard()
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    assert data["uid"] and data["title"]
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


# --------------------------------------------------------------------------- Prometheus


def compose_services() -> dict[str, Any]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert isinstance(services, dict)
    return services


def test_prometheus_scrapes_the_engine_metrics_port() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    [static] = job["static_configs"]
    engine_env = compose_services()["engine"]["environment"]
    assert static["targets"] == [f"engine:{engine_env['SELDON_HEALTH_SERVER_PORT']}"]
    assert re.fullmatch(r"\d+[smh]", config["global"]["scrape_interval"])


def test_monitoring_profile_wires_prometheus_and_grafana() -> None:
    services = compose_services()
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert grafana["image"].startswith("grafana/grafana:")
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["../deploy/grafana"] == "/var/lib/grafana/dashboards"
    assert (COMPOSE.parent / "../deploy/grafana/dataflow.json").resolve() == DASHBOARD

    datasources = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    [source] = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboards = MONITORING / "grafana" / "provisioning" / "dashboards" / "dataflow.yaml"
    [provider] = yaml.safe_load(dashboards.read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
