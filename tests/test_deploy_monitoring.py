"""What production watches: the Prometheus scrape config and alert rules (checked and unit-tested with
promtool), the Grafana dashboard, and the Kubernetes overlays (Ingress, ServiceMonitors, PrometheusRule).
Every metric they query is one the services export (or a named Prometheus/Envoy built-in)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, K8S, REPO

MONITORING = DEPLOY / "monitoring"
OVERLAYS = DEPLOY / "k8s-overlays"
# Not exported by Dynaseal's code: Prometheus' own scrape health and Envoy's admin stats (checked
# against a running Envoy in tests/test_deploy_compose_run.py).
EXTERNAL_METRICS = {"up": "Prometheus", "envoy_cluster_membership_healthy": "Envoy"}
# The signals production must be alerted on, by alert.
REQUIRED_ALERTS = {"DynasealAuthzDown", "DynasealGatewayFailingClosed", "DynasealRefusalsSpiking",
                   "DynasealShipperLagging", "DynasealConsumerLagging", "DynasealDlqGrowing",
                   "DynasealOldestReservationOpen", "DynasealConsumerGroupRebalancing"}
METRIC_DEF = re.compile(r"""\b(Counter|Gauge|Histogram|Summary)\(\s*["']([a-zA-Z_:][a-zA-Z0-9_:]*)["']""")


def exported_metrics() -> set[str]:
    """Every series name the services' prometheus_client metrics expose."""
    names: set[str] = set()
    for package in ("authz_service", "callback_consumer", "log_shipper", "issuer_api", "dynaseal"):
        for source in (REPO / package).rglob("*.py"):
            for kind, name in METRIC_DEF.findall(source.read_text()):
                if kind == "Counter":
                    names |= {name, name.removesuffix("_total") + "_total"}
                elif kind in ("Histogram", "Summary"):
                    names |= {name + suffix for suffix in ("_bucket", "_sum", "_count")} | {name}
                else:
                    names.add(name)
    return names


def queried_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers and grouping removed first)."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    tokens = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", bare))
    return {t for t in tokens if t.startswith(("dynaseal_", "envoy_", "gen_ai_")) or t == "up"}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("no promtool (Debian: apt-get install prometheus); the rules are checked by the other tests only")
    return binary


# ------------------------------------------------------------------ Prometheus and Grafana


def test_promtool_accepts_the_scrape_config_and_rules() -> None:
    binary = promtool()
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        proc = subprocess.run([binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_fire_on_their_signals() -> None:
    """promtool's rule unit tests (alerts.test.yml): each alert fires on its signal, not before."""
    proc = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=MONITORING,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_required_signal_has_an_alert() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_queried_metric_is_exported() -> None:
    exported = exported_metrics() | set(EXTERNAL_METRICS)
    assert "dynaseal_authz_decisions_total" in exported and "dynaseal_consumer_rebalances_total" in exported
    queried = {expr: queried_metrics(expr) for expr in [r["expr"] for r in alert_rules()] + dashboard_exprs()}
    for expr, names in queried.items():
        assert names, expr
        assert names <= exported, (expr, names - exported)


def test_metric_name_check_catches_a_misspelling() -> None:
    assert queried_metrics('sum by (code) (rate(dynaseal_authz_decision_total{result="deny"}[5m]))') == {
        "dynaseal_authz_decision_total"}
    assert "dynaseal_authz_decision_total" not in exported_metrics()


def test_dashboard_shows_every_alerted_signal() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    shown = set().union(*(queried_metrics(expr) for expr in dashboard_exprs()))
    alerted = set().union(*(queried_metrics(rule["expr"]) for rule in alert_rules()))
    assert alerted <= shown, alerted - shown


def test_scrape_jobs_are_the_jobs_the_alerts_and_servicemonitors_name() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for target in jobs.values():
        assert target.split(":")[0] in compose, target
    alert_jobs = set(re.findall(r'job="([^"]+)"', " ".join(rule["expr"] for rule in alert_rules())))
    assert alert_jobs <= set(jobs)
    monitors = [d for d in yaml.safe_load_all((OVERLAYS / "monitoring" / "servicemonitors.yaml").read_text()) if d]
    monitor_jobs = {m["spec"]["endpoints"][0]["relabelings"][0]["replacement"] for m in monitors}
    assert monitor_jobs == set(jobs) - {"dynaseal-envoy"}


# ------------------------------------------------------------------ Kubernetes overlays


def overlay_docs(name: str) -> list[dict[str, Any]]:
    """The overlay's own manifests (the base's are validated by tests/test_deploy_k8s.py)."""
    kustomization = yaml.safe_load((OVERLAYS / name / "kustomization.yaml").read_text())
    assert (OVERLAYS / name / kustomization["resources"][0]).resolve() == K8S
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"][1:]:
        docs += [d for d in yaml.safe_load_all((OVERLAYS / name / resource).read_text()) if d]
    return docs


def base_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for r in kustomization["resources"] for d in yaml.safe_load_all((K8S / r).read_text()) if d]


def test_overlay_core_manifests_validate() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name in ("ingress", "monitoring"):
        for doc in overlay_docs(name):
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: checked structurally below
            for version in ("1.29.0", kubernetes_validate.latest_version()):
                kubernetes_validate.validate(doc, version, strict=True)


def test_ingress_routes_to_the_gateway_service_with_tls() -> None:
    [ingress] = overlay_docs("ingress")
    services = {d["metadata"]["name"]: d for d in base_docs() if d["kind"] == "Service"}
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts <= {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    # Streamed answers must not be buffered by the controller.
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_servicemonitors_select_metrics_services_whose_ports_exist() -> None:
    docs = overlay_docs("monitoring")
    services = [d for d in docs if d["kind"] == "Service"]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in base_docs() if d["kind"] == "Deployment"}
    for service in services:
        selector = service["spec"]["selector"]
        [pod] = [p for p in pods.values() if selector.items() <= p["metadata"]["labels"].items()]
        container_ports = {port["name"] for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
                           for port in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports, service["metadata"]["name"]
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selected = [s for s in services
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert selected, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected)


def test_prometheusrule_carries_the_alert_rules() -> None:
    [rule] = [d for d in overlay_docs("monitoring") if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]


@pytest.mark.parametrize("overlay", ["ingress", "monitoring"])
def test_kubectl_kustomize_renders_the_overlay(overlay: str) -> None:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("no kubectl binary: the overlay is checked by the tests above only")
    rendered = subprocess.run([binary, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True,
                              timeout=120, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service"} <= kinds
    assert ("Ingress" if overlay == "ingress" else "ServiceMonitor") in kinds
    assert all(d["kind"] == "Namespace" or d["metadata"]["namespace"] == "dynaseal" for d in docs)


def test_compose_monitoring_files_exist() -> None:
    for name in ("prometheus.yml", "alerts.yml", "alerts.test.yml", "grafana-dashboard.json"):
        assert Path(MONITORING / name).is_file(), name


def test_rebalance_metrics_move_when_the_group_reassigns() -> None:
    """The counter DynasealConsumerGroupRebalancing reads: one per assignment, the owned partitions set."""
    from kafka import TopicPartition

    from callback_consumer import metrics
    from callback_consumer.consumer import _Rebalance
    from callback_consumer.offsets import OffsetTracker

    listener = _Rebalance(OffsetTracker())
    assigned = metrics.REBALANCES.labels("assigned")
    before = assigned._value.get()
    asyncio.run(listener.on_partitions_revoked([TopicPartition("dynaseal.usage.v1", 0)]))  # aiokafka awaits it
    assert metrics.ASSIGNED_PARTITIONS._value.get() == 0
    listener.on_partitions_assigned([TopicPartition("dynaseal.usage.v1", p) for p in (0, 3, 5)])
    assert assigned._value.get() == before + 1
    assert metrics.ASSIGNED_PARTITIONS._value.get() == 3
