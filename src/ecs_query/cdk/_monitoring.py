"""What an operator watches: a dashboard, alarms to an encrypted topic, a Spot fallback count.

The worker's metrics arrive as Embedded Metric Format records in its log stream (namespace
``EcsQuery``, one dimension ``Stage``); Step Functions and Container Insights publish theirs.
Spot fallbacks are counted from the state machine's own log: each entry into the
``FallBackToOnDemand`` state is one shard that Spot could not finish.
"""

from __future__ import annotations

from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ecs_query.cdk._workflow import FALLBACK_STATE

NAMESPACE: Final = "EcsQuery"
SPOT_FALLBACKS_METRIC: Final = "SpotFallbacks"
_PERIOD: Final = cdk.Duration.minutes(5)
_CONTAINER_INSIGHTS: Final = "ECS/ContainerInsights"


def worker_metric(name: str, stage: str, statistic: str = "Sum", label: str = "") -> cw.Metric:
    """One of the worker's EMF metrics (see ecs_query.worker)."""
    return cw.Metric(
        namespace=NAMESPACE,
        metric_name=name,
        dimensions_map={"Stage": stage},
        statistic=statistic,
        period=_PERIOD,
        label=label or name,
    )


def count_spot_fallbacks(scope: Construct, state_machine_logs: logs.ILogGroup) -> cw.Metric:
    """A metric filter on the state machine's log: one count per fallback state entered."""
    logs.MetricFilter(
        scope,
        "SpotFallbackFilter",
        log_group=state_machine_logs,
        metric_namespace=NAMESPACE,
        metric_name=SPOT_FALLBACKS_METRIC,
        metric_value="1",
        filter_pattern=logs.FilterPattern.all(
            logs.FilterPattern.string_value("$.type", "=", "PassStateEntered"),
            logs.FilterPattern.string_value("$.details.name", "=", FALLBACK_STATE),
        ),
    )
    return cw.Metric(
        namespace=NAMESPACE,
        metric_name=SPOT_FALLBACKS_METRIC,
        statistic="Sum",
        period=_PERIOD,
        label="Spot fallbacks to on-demand",
    )


def new_alarm_topic(scope: Construct, key: kms.IKey, email: str | None) -> sns.Topic:
    """KMS-encrypted, TLS-only; an email subscription when an address is given."""
    topic = sns.Topic(
        scope,
        "AlarmTopic",
        display_name="ecs-query alarms",
        master_key=key,
        enforce_ssl=True,
    )
    if email is not None:
        topic.add_subscription(subscriptions.EmailSubscription(email))
    return topic


def add_alarms(scope: Construct, state_machine: sfn.StateMachine, topic: sns.ITopic) -> None:
    """Any failed or timed-out job raises an alarm; quiet periods are not alarming."""
    action = cw_actions.SnsAction(topic)
    for alarm_id, metric, what in (
        ("JobsFailedAlarm", state_machine.metric_failed(period=_PERIOD), "failed"),
        ("JobsTimedOutAlarm", state_machine.metric_timed_out(period=_PERIOD), "timed out"),
    ):
        alarm = cw.Alarm(
            scope,
            alarm_id,
            metric=metric.with_(statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"An ecs-query job {what} in the last 5 minutes.",
        )
        alarm.add_alarm_action(action)


def new_dashboard(
    scope: Construct,
    *,
    state_machine: sfn.StateMachine,
    cluster: ecs.ICluster,
    spot_fallbacks: cw.Metric,
) -> cw.Dashboard:
    def executions(metric: cw.Metric, label: str) -> cw.Metric:
        return metric.with_(statistic="Sum", period=_PERIOD, label=label)

    def insights(name: str, label: str, statistic: str = "Sum") -> cw.Metric:
        return cw.Metric(
            namespace=_CONTAINER_INSIGHTS,
            metric_name=name,
            dimensions_map={"ClusterName": cluster.cluster_name},
            statistic=statistic,
            period=cdk.Duration.minutes(1),
            label=label,
        )

    dashboard = cw.Dashboard(scope, "Dashboard")
    dashboard.add_widgets(
        cw.GraphWidget(
            title="Jobs",
            left=[
                executions(state_machine.metric_started(), "Started"),
                executions(state_machine.metric_succeeded(), "Succeeded"),
                executions(state_machine.metric_failed(), "Failed"),
                executions(state_machine.metric_timed_out(), "Timed out"),
            ],
            width=8,
        ),
        cw.GraphWidget(
            title="Shards",
            left=[
                worker_metric("ShardsSucceeded", "shard", label="Succeeded"),
                worker_metric("ShardsFailed", "shard", label="Failed"),
                spot_fallbacks,
            ],
            width=8,
        ),
        cw.GraphWidget(
            title="Commits and stage failures",
            left=[
                worker_metric("JobsCommitted", "finalize", label="Jobs committed"),
                worker_metric("StagesFailed", "plan", label="Plan failed"),
                worker_metric("StagesFailed", "finalize", label="Finalize failed"),
            ],
            width=8,
        ),
    )
    dashboard.add_widgets(
        cw.GraphWidget(
            title="Rows",
            left=[
                worker_metric("RowsOut", "shard", label="Rows out of shards"),
                worker_metric("RowsCommitted", "finalize", label="Rows committed"),
            ],
            width=8,
        ),
        cw.GraphWidget(
            title="Bytes",
            left=[
                worker_metric("InputBytes", "shard", label="Input bytes"),
                worker_metric("BytesOut", "shard", label="Bytes out"),
            ],
            width=8,
        ),
        cw.GraphWidget(
            title="Shard duration (ms)",
            left=[
                worker_metric("ShardDuration", "shard", "p50", "p50"),
                worker_metric("ShardDuration", "shard", "p90", "p90"),
                worker_metric("ShardDuration", "shard", "Maximum", "max"),
            ],
            width=8,
        ),
    )
    dashboard.add_widgets(
        cw.GraphWidget(
            title="Tasks running",
            left=[insights("TaskCount", "Tasks", "Maximum")],
            width=8,
        ),
        cw.GraphWidget(
            title="Task CPU (units)",
            left=[
                insights("CpuUtilized", "Used"),
                insights("CpuReserved", "Reserved"),
            ],
            width=8,
        ),
        cw.GraphWidget(
            title="Task memory (MiB)",
            left=[
                insights("MemoryUtilized", "Used"),
                insights("MemoryReserved", "Reserved"),
            ],
            width=8,
        ),
    )
    return dashboard
