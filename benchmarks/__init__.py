"""Benchmarks for cdk-ecs-query, run with ``python -m benchmarks`` (``make bench``).

They print medians of repeated runs and ratios against a baseline measured in the same run,
never single timings: the machines they run on are shared and noisy. See docs/benchmarks.md.
"""
