"""Narrow grants that CDK generates wider than they need to be.

``EcsRunTask`` with ``RUN_JOB`` grants ``ecs:StopTask`` and ``ecs:DescribeTasks`` on every
resource, yet both accept task ARNs, and every task the state machine starts runs in one
cluster. The statement is rewritten at synthesis, once every grant is in place, to the tasks of
that cluster only.
"""

from __future__ import annotations

from typing import Any, Final

import aws_cdk as cdk
import jsii
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from constructs import IConstruct

TASK_ACTIONS: Final = frozenset({"ecs:StopTask", "ecs:DescribeTasks"})


def task_arns(cluster: ecs.ICluster) -> str:
    """Every task of ``cluster``: ``arn:<partition>:ecs:<region>:<account>:task/<cluster>/*``."""
    return cdk.Stack.of(cluster).format_arn(
        service="ecs",
        resource="task",
        resource_name=f"{cluster.cluster_name}/*",
        arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME,
    )


@jsii.implements(cdk.IAspect)
class _ScopeTaskActions:
    def __init__(self, resource: str) -> None:
        self.resource = resource

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, iam.CfnPolicy):
            return
        document: Any = cdk.Stack.of(node).resolve(node.policy_document)
        for index, statement in enumerate(document.get("Statement", [])):
            actions = statement.get("Action")
            listed = {actions} if isinstance(actions, str) else set(actions or [])
            if listed == TASK_ACTIONS and statement.get("Resource") == "*":
                node.add_property_override(
                    f"PolicyDocument.Statement.{index}.Resource", self.resource
                )


def scope_task_actions(policy: IConstruct, cluster: ecs.ICluster) -> str:
    """Limit CDK's task-watching grant in ``policy`` to ``cluster``'s tasks; returns the ARN."""
    resource = task_arns(cluster)
    cdk.Aspects.of(policy).add(_ScopeTaskActions(resource))
    return resource
