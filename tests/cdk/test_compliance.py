"""Independent checks of the synthesized templates: cdk-nag, cfn-lint and checkov.

Each runs on the default stack and on two variants (existing resources with every prop set;
NAT with a new file system). Every accepted finding is acknowledged in the construct, one by
one with its reason; here nothing may be left over.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cdk.support import REPO_ROOT, STACK_NAME, Synth, nag_violations, synth
from tests.cdk.variants import EXISTING_PROPS, NAT_EFS_PROPS, existing_resources

CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
CFN_LINT = REPO_ROOT / ".venv" / "bin" / "cfn-lint"
VARIANTS = ("default", "existing", "nat_efs")


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Synth]:
    return {
        "default": synth(tmp_path_factory.mktemp("nag-default"), nag=True),
        "existing": synth(
            tmp_path_factory.mktemp("nag-existing"),
            nag=True,
            existing=existing_resources,
            **EXISTING_PROPS,
        ),
        "nat_efs": synth(tmp_path_factory.mktemp("nag-nat-efs"), nag=True, **NAT_EFS_PROPS),
    }


def template_path(synthesized: Synth) -> Path:
    return synthesized.outdir / f"{STACK_NAME}.template.json"


@pytest.mark.parametrize("variant", VARIANTS)
def test_cdk_nag_finds_nothing_unacknowledged(synthesized: dict[str, Synth], variant: str) -> None:
    assert nag_violations(synthesized[variant].outdir) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_acknowledgment_names_one_finding_and_gives_a_reason(
    synthesized: dict[str, Synth], variant: str
) -> None:
    acknowledged = acknowledgments(synthesized[variant])
    assert len(acknowledged) >= 8
    for path, rule, reason in acknowledged:
        assert rule.startswith("AwsSolutions::AwsSolutions-"), (path, rule)
        if "-IAM5" in rule or "-IAM4" in rule:
            assert re.fullmatch(
                r"AwsSolutions::AwsSolutions-IAM[45]\[(Resource|Policy)::.+\]", rule
            )
        assert len(reason) > 60, (path, rule)


def test_acknowledges_no_blanket_wildcard_rule(synthesized: dict[str, Synth]) -> None:
    rules = {rule for variant in VARIANTS for _, rule, _ in acknowledgments(synthesized[variant])}
    assert "AwsSolutions::AwsSolutions-IAM5" not in rules
    assert "AwsSolutions::AwsSolutions-IAM4" not in rules
    assert not any("Action::" in rule for rule in rules)


def acknowledgments(synthesized: Synth) -> list[tuple[str, str, str]]:
    """(construct path, rule id, reason) of every acknowledgment in the stack."""
    found: list[tuple[str, str, str]] = []
    for construct in synthesized.stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                found.extend(
                    (construct.node.path, str(rule), str(reason))
                    for rule, reason in dict(entry.data).items()
                    if str(rule).startswith("AwsSolutions")
                )
    return found


def test_cfn_lint_reports_no_errors_or_warnings(synthesized: dict[str, Synth]) -> None:
    paths = [str(template_path(synthesized[variant])) for variant in VARIANTS]
    result = subprocess.run(
        [str(CFN_LINT), "--format", "parseable", *paths],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == "", result.stdout
    assert result.returncode == 0, result.stderr


def test_checkov_finds_no_failed_checks(synthesized: dict[str, Synth]) -> None:
    command = [str(CHECKOV), "--framework", "cloudformation", "--skip-download", "-o", "json"]
    for variant in VARIANTS:
        command += ["-f", str(template_path(synthesized[variant]))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        (check["check_id"], check["resource"], check["file_path"])
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert sum(report["summary"]["passed"] for report in reports) > 300


def test_checkov_skips_are_few_and_each_carries_a_reason(synthesized: dict[str, Synth]) -> None:
    skips = [
        (logical_id, skip)
        for variant in VARIANTS
        for logical_id, resource in synthesized[variant].template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert {skip["id"] for _, skip in skips} == {
        "CKV_AWS_18",
        "CKV_AWS_111",
        "CKV_AWS_115",
        "CKV_AWS_116",
        "CKV_AWS_117",
    }
    for logical_id, skip in skips:
        assert len(skip["comment"]) > 40, (logical_id, skip)
