"""The deployment artefacts are valid and talk about metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from cdc_scorer.ops.metrics import Telemetry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert found, f"{name} is not installed: run `make test`, which installs it"
    return str(found)


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)


def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloudformation_passes_cfn_lint() -> None:
    result = _run(_tool("cfn-lint"), *sorted(str(p) for p in DEPLOY.glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
        ("check", "config", "prometheus.yml"),
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_prometheus_files_pass_promtool(args: tuple[str, ...]) -> None:
    result = _run(_tool("promtool"), *args, cwd=DEPLOY / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr


def _exposed_names() -> set[str]:
    text = generate_latest(Telemetry().registry).decode()
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.MULTILINE)}


def _used_names(text: str) -> set[str]:
    names = set(re.findall(r"\bcdc_scorer_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_alerts_dashboard_and_the_reference_name_real_metrics() -> None:
    exposed = _exposed_names()
    counters = {n + "_total" for n in exposed}
    known = exposed | counters | {"cdc_scorer_build_info"}
    alerts = " ".join(
        line
        for line in (DEPLOY / "prometheus" / "alerts.yml").read_text().splitlines()
        if line.strip().startswith("expr:")
    )
    dashboard = json.loads((DEPLOY / "grafana" / "cdc-scorer.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for where, text in (("alerts.yml", alerts), ("dashboard", exprs)):
        unknown = _used_names(text) - known
        assert not unknown, f"{where} uses metrics that do not exist: {unknown}"
    # The metrics reference (generated from the registry; tests/unit/test_docs.py keeps it
    # current) names every metric exposed.
    reference = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    for name in sorted(exposed):
        shown = name + "_total" if f"{name}_total" in reference else name
        assert f"`{shown}" in reference, f"docs/reference/metrics.md does not document {name}"


def _template() -> dict[str, Any]:
    """The ECS template, its intrinsic functions kept as ``{"!Tag": value}``."""
    import yaml

    loader: Any = type("Loader", (yaml.SafeLoader,), {})

    def tagged(loader: Any, suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {f"!{suffix}": value}

    loader.add_multi_constructor("!", tagged)
    loaded: dict[str, Any] = yaml.load((DEPLOY / "ecs-service.yaml").read_text(), Loader=loader)
    return loaded


def test_the_ecs_template_runs_n_tasks_in_kafka_mode_with_the_msk_iam_policy() -> None:
    template = _template()
    service = template["Resources"]["Service"]["Properties"]
    assert service["DesiredCount"] == {"!Ref": "DesiredCount"}
    container = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    kafka_env = {
        entry["!If"][1]["Name"]
        for entry in container["Environment"]
        if isinstance(entry, dict) and "!If" in entry
    }
    assert kafka_env == {
        "CDC_SCORER_SOURCE__DEBEZIUM__BOOTSTRAP_SERVERS",
        "CDC_SCORER_SOURCE__DEBEZIUM__TOPIC_PREFIX",
        "CDC_SCORER_SOURCE__DEBEZIUM__SECURITY",
        "CDC_SCORER_SOURCE__DEBEZIUM__SIGNAL_TABLE",
    }
    policies = template["Resources"]["TaskRole"]["Properties"]["Policies"]
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    (msk,) = [s["!If"][1] for s in statements if "!If" in s and s["!If"][0] == "UseMskIam"]
    assert {"kafka-cluster:Connect", "kafka-cluster:ReadData", "kafka-cluster:AlterGroup"} <= set(
        msk["Action"]
    )
    assert len(msk["Resource"]) == 3  # the cluster, its topics under the prefix, the groups


def test_the_ecs_template_grants_what_backfills_need() -> None:
    """The task role may write and read the jobs' files, pass the job role to Bedrock, run
    Bedrock batch inference and SageMaker transform jobs — the actions docs/how-to/backfills.md
    lists, each one; the job role Bedrock assumes reads and writes the prefix."""
    template = _template()
    policies = template["Resources"]["TaskRole"]["Properties"]["Policies"]
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    backfill = [s["!If"][1] for s in statements if "!If" in s and s["!If"][0] == "UseBackfill"]
    granted = set()
    for statement in backfill:
        actions = statement["Action"]
        granted |= {actions} if isinstance(actions, str) else set(actions)
    needed = {
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "iam:PassRole",
        "bedrock:CreateModelInvocationJob",
        "bedrock:GetModelInvocationJob",
        "bedrock:StopModelInvocationJob",
        "sagemaker:CreateTransformJob",
        "sagemaker:DescribeTransformJob",
        "sagemaker:StopTransformJob",
        "sagemaker:DescribeEndpoint",
        "sagemaker:DescribeEndpointConfig",
    }
    assert granted == needed
    docs = (ROOT / "docs" / "how-to" / "backfills.md").read_text()
    assert all(f"`{action}`" in docs for action in needed), "the how-to lists each action"
    job_role = template["Resources"]["BackfillJobRole"]["Properties"]
    trusted = job_role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"]
    assert trusted == "bedrock.amazonaws.com"
    job_actions = {
        a
        for s in job_role["Policies"][0]["PolicyDocument"]["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert job_actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
