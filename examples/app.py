"""A CDK app with one ``QueryProcessingStack``.

From this folder: ``npx aws-cdk@2 synth`` or ``npx aws-cdk@2 deploy`` (see cdk.json), or
``python app.py`` to write the cloud assembly to ./cdk.out without the CDK CLI. The stack is
environment-agnostic unless CDK_DEFAULT_ACCOUNT and CDK_DEFAULT_REGION are set (the CLI sets
them from your credentials), so synthesis needs no AWS account.

Context values (``-c name=value``): ``alarmEmail`` subscribes an address to the alarms,
``stackName`` names the stack (default: EcsQuery).
"""

from __future__ import annotations

import os
from pathlib import Path

import aws_cdk as cdk

from ecs_query.cdk import QueryProcessingStack


def main() -> None:
    # The CLI tells the app where to write; run directly, the app writes next to itself.
    outdir = os.environ.get("CDK_OUTDIR") or str(Path(__file__).resolve().parent / "cdk.out")
    app = cdk.App(outdir=outdir)
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account and region else None
    stack_name = app.node.try_get_context("stackName") or "EcsQuery"
    alarm_email = app.node.try_get_context("alarmEmail")
    if alarm_email is None:
        QueryProcessingStack(app, stack_name, env=env)
    else:
        QueryProcessingStack(app, stack_name, env=env, alarm_email=str(alarm_email))
    app.synth()


if __name__ == "__main__":
    main()
