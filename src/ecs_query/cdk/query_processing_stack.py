"""``QueryProcessingStack``: a stack with one ``QueryProcessor`` and its outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Unpack

import aws_cdk as cdk
from constructs import Construct

from ecs_query.cdk.query_processor import QueryProcessor, QueryProcessorProps


class QueryProcessingStack(cdk.Stack):
    """A ready-to-deploy stack: one ``QueryProcessor`` (id ``QueryProcessor``) and outputs
    naming what a user needs to run jobs: the state machine, the buckets, the cluster, the log
    group and the dashboard.

    :param env: The account and region. Default: - environment-agnostic.
    :param stack_name: Default: - the construct id.
    :param description: Default: - a description of what the stack runs.
    :param termination_protection: Default: false.
    :param tags: Tags for every resource of the stack. Default: - none.
    :param synthesizer: Default: - the app's default synthesizer.
    :param processor_props: Every ``QueryProcessor`` keyword argument, with the same defaults.
    """

    processor: QueryProcessor

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env: cdk.Environment | None = None,
        stack_name: str | None = None,
        description: str | None = None,
        termination_protection: bool | None = None,
        tags: Mapping[str, str] | None = None,
        synthesizer: cdk.IStackSynthesizer | None = None,
        **processor_props: Unpack[QueryProcessorProps],
    ) -> None:
        super().__init__(
            scope,
            id,
            env=env,
            stack_name=stack_name,
            description=(
                "ecs-query: SQL jobs over S3 as sharded DuckDB tasks on Fargate and Fargate Spot"
                if description is None
                else description
            ),
            termination_protection=termination_protection,
            tags=tags,
            synthesizer=synthesizer,
        )
        self.processor = QueryProcessor(self, "QueryProcessor", **processor_props)
        processor = self.processor
        for output_id, value, what in (
            ("StateMachineArn", processor.state_machine.state_machine_arn, "start jobs here"),
            ("InputBucketName", processor.input_bucket.bucket_name, "jobs read from here"),
            ("OutputBucketName", processor.output_bucket.bucket_name, "jobs write here"),
            ("ClusterName", processor.cluster.cluster_name, "worker tasks run here"),
            ("LogGroupName", processor.log_group.log_group_name, "worker logs and metrics"),
            ("DashboardName", processor.dashboard.dashboard_name, "CloudWatch dashboard"),
        ):
            cdk.CfnOutput(self, output_id, value=value, description=what)
