"""The AWS CDK construct that deploys ecs-query: ``QueryProcessor`` and ``QueryProcessingStack``.

Needs the ``cdk`` extra (``pip install 'cdk-ecs-query[cdk]'``). See docs/construct.md.
"""

from ecs_query.cdk._validation import PropsError
from ecs_query.cdk.query_processing_stack import QueryProcessingStack
from ecs_query.cdk.query_processor import QueryProcessor, QueryProcessorProps

__all__ = ["PropsError", "QueryProcessingStack", "QueryProcessor", "QueryProcessorProps"]
