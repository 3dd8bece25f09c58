"""End-to-end runs of the synthesized state machine on this machine.

The definition comes from a synthesized ``QueryProcessingStack``; moto's Step Functions
interpreter executes it; every ECS task it starts is a real ``ecs-query worker`` process reading
and writing a moto S3 server on 127.0.0.1. See docs/orchestration.md for what this proves and
what it cannot.
"""
