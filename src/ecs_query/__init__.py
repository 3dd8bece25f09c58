"""cdk-ecs-query: large SQL data-manipulation jobs as sharded DuckDB tasks on Amazon ECS.

The runtime (planner, worker, local runner, CLI) lives here and never imports ``aws_cdk``;
the CDK construct is in ``ecs_query.cdk`` and needs the ``cdk`` extra.
"""

__version__ = "0.1.0"
