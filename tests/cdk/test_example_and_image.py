"""The example app synthesizes without an AWS account, with and without the CDK CLI, and the
worker image's Dockerfile keeps the container contract (it cannot be built here: no Docker)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.cdk.support import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
DOCKERFILE = (REPO_ROOT / "container" / "Dockerfile").read_text()


def app_environment(outdir: Path | None = None, **extra: str) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "CDK_"))
    }
    environment["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "20"
    environment["CDK_VALIDATION"] = "false"
    if outdir is not None:
        environment["CDK_OUTDIR"] = str(outdir)
    environment.update(extra)
    return environment


def test_make_synth_writes_an_environment_agnostic_assembly(tmp_path: Path) -> None:
    """What `make synth` runs: python app.py from examples/, no account, no CLI."""
    result = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "app.py"],
        cwd=EXAMPLES,
        env=app_environment(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stack = manifest["artifacts"]["EcsQuery"]
    assert stack["environment"] == "aws://unknown-account/unknown-region"
    template = json.loads((tmp_path / "EcsQuery.template.json").read_text())
    assert "StateMachineArn" in template["Outputs"]


def test_cdk_cli_synthesizes_the_example_with_context(tmp_path: Path) -> None:
    """`npx aws-cdk@2 synth` from examples/ runs the app cdk.json names."""
    result = subprocess.run(
        [
            "npx",
            "--no-install",
            "aws-cdk@2",
            "synth",
            "--quiet",
            "--no-notices",
            "--no-version-reporting",
            "--output",
            str(tmp_path),
            "-c",
            "alarmEmail=ops@example.com",
            "-c",
            "stackName=Jobs",
        ],
        cwd=EXAMPLES,
        env=app_environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    template = json.loads((tmp_path / "Jobs.template.json").read_text())
    subscriptions = [
        resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::SNS::Subscription"
    ]
    assert subscriptions == [
        {
            "Endpoint": "ops@example.com",
            "Protocol": "email",
            "TopicArn": {"Ref": "QueryProcessorAlarmTopic70402AD6"},
        }
    ]


def test_cdk_json_runs_the_app_with_the_project_environment() -> None:
    config = json.loads((EXAMPLES / "cdk.json").read_text())
    assert config["app"] == "../.venv/bin/python app.py"
    assert config["context"]["@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy"] is True


# ---------------------------------------------------------------------------- image


def stages(dockerfile: str) -> list[str]:
    return re.split(r"(?m)^FROM ", dockerfile)[1:]


def test_base_image_is_python_3_11_slim_pinned_to_a_patch_release() -> None:
    match = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE)
    assert match is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", match.group(1))
    assert [stage.split()[0] for stage in stages(DOCKERFILE)] == ["${PYTHON_IMAGE}"] * 2


def test_builder_installs_a_wheel_of_the_project_without_dev_dependencies() -> None:
    builder = stages(DOCKERFILE)[0]
    assert builder.startswith("${PYTHON_IMAGE} AS builder")
    assert "COPY pyproject.toml README.md ./" in builder
    assert "COPY src ./src" in builder
    assert "pip wheel --no-deps --wheel-dir /build/dist ." in builder
    assert "pip install /build/dist/*.whl" in builder
    assert "[dev]" not in DOCKERFILE and "[cdk" not in DOCKERFILE
    assert " -e " not in DOCKERFILE


def test_runtime_pins_duckdb_and_its_httpfs_extension_wheels() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    dependencies = project["dependencies"]
    for pin in ("duckdb==1.5.5", "duckdb-extension-httpfs==1.5.5", "duckdb-extensions==1.5.5"):
        assert pin in dependencies
    assert not any(dep.startswith("aws-cdk") for dep in dependencies)


def test_final_stage_runs_ecs_query_worker_as_uid_1000() -> None:
    final = stages(DOCKERFILE)[1]
    assert "COPY --from=builder /opt/ecs-query /opt/ecs-query" in final
    assert "useradd --uid 1000 --gid 1000" in final
    assert re.search(r"(?m)^USER 1000:1000$", final)
    assert re.search(r'(?m)^ENTRYPOINT \["ecs-query"\]$', final)
    assert re.search(r'(?m)^CMD \["worker"\]$', final)
    assert re.search(r'(?m)^VOLUME \["/tmp"\]$', final)
    assert "chown 1000:1000 /mnt/ecs-query" in final


def test_entrypoint_is_the_project_command_and_python_dash_m_runs_the_same() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"ecs-query": "ecs_query.cli:main"}
    main_module = (REPO_ROOT / "src" / "ecs_query" / "__main__.py").read_text()
    assert "from ecs_query.cli import main" in main_module
    assert "sys.exit(main())" in main_module


@pytest.mark.parametrize(
    "line",
    ["*", "!pyproject.toml", "!README.md", "!src/", "!container/Dockerfile", "src/ecs_query/cdk/"],
)
def test_dockerignore_lets_only_the_build_inputs_in(line: str) -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert line in lines
    assert lines.index("*") < lines.index("!src/")
