"""Fixtures: the synthesized stack (once per test process) and a running orchestration of it
(once per test module), reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Orchestration
from tests.e2e.stack import Template, synthesize


@pytest.fixture(scope="session")
def default_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A QueryProcessingStack with every default, as examples/app.py deploys it."""
    return synthesize(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="module")
def orchestration(
    default_template: Template, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orchestration]:
    with Orchestration(default_template, tmp_path_factory.mktemp("orchestration")) as running:
        yield running


@pytest.fixture
def cloud(orchestration: Orchestration) -> Iterator[Orchestration]:
    """The module's orchestration with no faults, task records or retry waits left over."""
    orchestration.reset()
    yield orchestration
    orchestration.tasks.stop_all()
