"""``python -m ecs_query``: the same as the ``ecs-query`` command."""

import sys

from ecs_query.cli import main

sys.exit(main())
