"""The alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboard (deploy/grafana/hounsfield.json)
against what the processes really serve.

The rule file is checked by Prometheus's own ``promtool check rules``; every PromQL expression (each alert
and each panel's target) is parsed by a real PromQL parser (promql-parser, the Rust parser's bindings), and
every metric it selects must be served by a running process: ``hounsfield up`` is started with a metrics
port for the listener, the worker and the registry, and each ``/metrics`` is scraped. The label names an
expression matches on must be ones the metric carries (the metric classes the processes build declare
them; what a scrape-time collector yields is read from the scrape).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from hounsfield.demo.orthanc import free_port
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.store import StudyStore
from hounsfield.worker.metrics import WorkerMetrics
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "hounsfield.json"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every scrape target; no process serves them."""
TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every series it scrapes."""
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}

Exposed = dict[str, set[str]]
"""Each sample name a process serves, with the label names it carries."""


def _exposed(text: str, into: Exposed) -> None:
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            into.setdefault(family.name + suffix, set())
        for sample in family.samples:
            into.setdefault(sample.name, set()).update(sample.labels)


def _declared(*owners: object) -> Exposed:
    """The label names of each metric the ``owners`` hold (a scrape shows them only once a child exists)."""
    labels: Exposed = {}
    for owner in owners:
        for value in vars(owner).values():
            if isinstance(value, MetricWrapperBase):
                declared = set(value._labelnames)  # set at construction; prometheus_client has no public reader
                for suffix in SUFFIXES.get(value._type, ("",)):
                    labels.setdefault(value._name + suffix, set()).update(declared)
                if value._type == "histogram":
                    labels[value._name + "_bucket"].add("le")
    return labels


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """What ``hounsfield up``'s three processes serve on their ``/metrics``, by process."""
    folder = tmp_path_factory.mktemp("up")
    ports = {"listener": free_port(), "worker": free_port(), "registry": free_port()}
    config = folder / "hounsfield.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(folder / "data"),
                "local_redis_port": free_port(),
                "listener": {"host": "127.0.0.1", "port": free_port(), "metrics_port": ports["listener"]},
                "worker": {"metrics_port": ports["worker"]},
                "registry": {"port": ports["registry"], "development": True, "stow_enabled": True},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    log = (folder / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "hounsfield.cli", "up", "--config", str(config)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}

    def serving() -> bool:
        assert up.poll() is None, (folder / "up.log").read_text()
        try:
            return all(httpx.get(url, timeout=2).status_code == 200 for url in urls.values())
        except httpx.HTTPError:
            return False

    try:
        wait_for(serving, timeout=180)
        httpx.get(f"http://127.0.0.1:{ports['registry']}/health", timeout=10)  # one request to count
        yield {name: httpx.get(url, timeout=10).text for name, url in urls.items()}
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        log.close()
    logged = (folder / "up.log").read_text()
    for name, url in urls.items():
        assert f"{name}: Prometheus metrics at {url}" in logged, "hounsfield up says where each process serves"


@pytest.fixture(scope="module")
def exposed(scrapes: dict[str, str]) -> Exposed:
    """Every sample name the three processes serve, with the label names their samples carry."""
    served: Exposed = {}
    for text in scrapes.values():
        _exposed(text, served)
    return served


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> Exposed:
    """The label names of the listener's (and its router's) and the worker's metrics, built as those processes
    build them; the registry's collectors and HTTP metrics show theirs in the scrape."""
    listener = ListenerMetrics(StudyStore(tmp_path_factory.mktemp("store")))
    return _declared(listener, listener.routing, WorkerMetrics())


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _panel_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"]] + [c for p in dashboard["panels"] for c in p.get("panels", [])]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def _selectors(expression: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def _expressions() -> list[tuple[str, str]]:
    alerts = [(f"alert {rule['alert']}", rule["expr"]) for rule in _alert_rules()]
    return alerts + [(f"panel {title!r}", expr) for title, expr in _panel_targets()]


def test_prometheus_can_read_what_every_process_serves(scrapes: dict[str, str]) -> None:
    """``promtool check metrics``: Prometheus's own parser and linter (one HELP per name, counters ending in
    _total, units as suffixes) on each process's exposition."""
    assert set(scrapes) == {"listener", "worker", "registry"}
    for process, text in scrapes.items():
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, f"{process}: {checked.stdout}{checked.stderr}"


def test_promtool_accepts_the_rule_file() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in checked.stdout


def test_the_alerts_fire_on_the_series_their_unit_tests_give() -> None:
    """alerts.test.yml: the store's floor, the stat queue, a model version's failure ratio, refused exports and
    validation failures, input drift, retention failures and early purges fire when they should (and not
    before), with their descriptions rendered."""
    tested = subprocess.run(
        ["promtool", "test", "rules", ALERTS.with_name("alerts.test.yml").name],
        cwd=ALERTS.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_says_what_to_do() -> None:
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_the_dashboard_covers_every_part_of_the_path() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Ingest",
        "Completeness",
        "Queues",
        "Jobs by stage",
        "Exports",
        "Store disk",
        "Registry",
        "Retention and input drift",
    ]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]), "panel ids are unique"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")


def test_every_expression_parses_and_names_only_metrics_the_processes_serve(
    exposed: Exposed, declared: Exposed
) -> None:
    expressions = _expressions()
    assert len(expressions) > 40
    checked = set()
    for where, expression in expressions:
        try:
            selectors = _selectors(expression)
        except ValueError as exc:
            pytest.fail(f"{where}: not PromQL: {exc}")
        assert selectors, f"{where}: selects no metric"
        for selector in selectors:
            name = selector.name
            assert name, f"{where}: a selector without a metric name"
            if name in PROMETHEUS_OWN:
                continue
            assert name in exposed, f"{where}: no process serves {name}"
            carried = exposed[name] | declared.get(name, set()) | TARGET_LABELS
            matched = {m.name for m in selector.matchers.matchers} - {"__name__"}
            assert matched <= carried, f"{where}: {name} has no label {sorted(matched - carried)}"
            checked.add(name)
    assert {"hounsfield_queue_depth", "hounsfield_worker_job_stage_seconds_bucket"} <= checked
    assert {"hounsfield_study_completeness_seconds_bucket", "hounsfield_store_free_bytes"} <= checked
