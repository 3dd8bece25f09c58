"""CDK's built-in CloudFormation validation on the default stack.

Its findings are warnings that do not stop synthesis; they are written to the assembly's
validation-report.json, so the tests read that report.

It is slow (it validates every resource against the CloudFormation schemas and CDK's own
rules), so this is the one module that turns it on.
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk

from tests.cdk.support import new_app, synth


def violations(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    document = json.loads(report.read_text())
    return [
        f"{violation['ruleName']}: {violation['description']}"
        for plugin in document["pluginReports"]
        for violation in plugin["violations"]
    ]


def test_default_stack_passes_cdk_cloudformation_validation(tmp_path: Path) -> None:
    synthesized = synth(tmp_path, validation=True)
    assert synthesized.template["Resources"]
    assert violations(tmp_path) == []


def test_validation_reports_an_invalid_resource(tmp_path: Path) -> None:
    """The control: the same settings report a value CloudFormation would refuse."""
    app = new_app(tmp_path, validation=True)
    stack = cdk.Stack(app, "Invalid")
    cdk.CfnResource(
        stack,
        "Bucket",
        type="AWS::S3::Bucket",
        properties={"VersioningConfiguration": {"Status": "Sometimes"}},
    )
    app.synth()
    (finding,) = violations(tmp_path)
    assert "'Sometimes' is not one of ['Enabled', 'Suspended']" in finding
