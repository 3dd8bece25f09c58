"""Helpers for the construct's tests: synthesize a stack, read what CloudFormation would get.

Synthesis is the slow part (several seconds for the first one in a process), so test modules
synthesize once, in module-scoped fixtures, and assert on the result many times.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import assertions

from ecs_query.cdk import QueryProcessingStack, QueryProcessor

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_NAME = "QueryTest"
# Placeholders for CloudFormation pseudo parameters when a definition is made concrete.
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::URLSuffix": "amazonaws.com",
}

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@dataclass
class Synth:
    """One synthesized stack: the live objects, the template and the cloud assembly folder."""

    app: cdk.App
    stack: cdk.Stack
    processor: QueryProcessor
    template: dict[str, Any]
    outdir: Path

    @property
    def assertions(self) -> assertions.Template:
        return assertions.Template.from_json(self.template)

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.template["Resources"].items()
            if resource["Type"] == resource_type
        }

    def one(self, resource_type: str) -> dict[str, Any]:
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        return next(iter(found.values()))

    def logical_id(self, construct: Any) -> str:
        """The logical id of a construct's CloudFormation resource."""
        resource = construct.node.default_child if hasattr(construct, "node") else construct
        return str(self.stack.resolve(resource.logical_id))

    def definition(self, refs: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The state machine's definition with every token made concrete (see concrete())."""
        machine = self.one("AWS::StepFunctions::StateMachine")
        text = concrete(machine["Properties"]["DefinitionString"], refs or {})
        return dict(json.loads(text))

    def container_definition(self) -> dict[str, Any]:
        task = self.one("AWS::ECS::TaskDefinition")
        (container,) = task["Properties"]["ContainerDefinitions"]
        return dict(container)


def new_app(outdir: Path, *, validation: bool = False) -> cdk.App:
    """An app writing to ``outdir``. With ``validation``, CDK's built-in CloudFormation
    validation runs; it reports findings as warnings and writes them to
    ``validation-report.json`` in the assembly, which the tests read."""
    return cdk.App(outdir=str(outdir), builtin_cloud_formation_validation=validation)


def synth(
    outdir: Path,
    *,
    nag: bool = False,
    validation: bool = False,
    existing: Callable[[cdk.Stack], Mapping[str, Any]] | None = None,
    after: Callable[[cdk.Stack, QueryProcessor], None] | None = None,
    **props: Any,
) -> Synth:
    """Synthesize ``props`` as a QueryProcessingStack, or, with ``existing``, as a
    QueryProcessor in a plain stack that first imports the resources ``existing`` returns.

    ``nag`` adds cdk-nag's AwsSolutions pack as a validation plugin; ``validation`` keeps CDK's
    built-in CloudFormation validation on (slow: several seconds). ``after`` adds to the
    stack once the processor exists (a principal to grant to, for example).
    """
    from cdk_nag import AwsSolutionsChecks

    app = new_app(outdir, validation=validation)
    stack: cdk.Stack
    if existing is None:
        stack = QueryProcessingStack(app, STACK_NAME, **props)
        processor = stack.processor
    else:
        stack = cdk.Stack(app, STACK_NAME)
        processor = QueryProcessor(stack, "QueryProcessor", **{**props, **existing(stack)})
    if after is not None:
        after(stack, processor)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    assembly = app.synth()
    template = assembly.get_stack_by_name(STACK_NAME).template
    return Synth(app, stack, processor, dict(template), outdir)


def concrete(value: Any, refs: Mapping[str, str]) -> str:
    """A CloudFormation string value with its intrinsics replaced by plausible strings.

    ``Ref`` of a pseudo parameter becomes its placeholder, ``Ref`` of a resource becomes
    ``refs[logical id]`` or a lower-case name; ``Fn::GetAtt`` becomes an ARN-shaped string.
    """
    if isinstance(value, str):
        return value
    if "Ref" in value:
        name = value["Ref"]
        return PSEUDO.get(name) or refs.get(name) or f"ref-{name.lower()}"
    if "Fn::GetAtt" in value:
        name, attribute = value["Fn::GetAtt"]
        if name in refs:
            return refs[name]
        return f"arn:aws:service:us-east-1:123456789012:{name.lower()}/{attribute.lower()}"
    if "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return str(delimiter).join(concrete(part, refs) for part in parts)
    if "Fn::Select" in value:
        index, source = value["Fn::Select"]
        if "Fn::Split" in source:
            delimiter, text = source["Fn::Split"]
            return concrete(text, refs).split(delimiter)[int(index)]
        return concrete(source[int(index)], refs)
    if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        return re.sub(
            r"\$\{([^}]+)\}",
            lambda match: concrete({"Ref": match.group(1)}, refs),
            value["Fn::Sub"],
        )
    raise AssertionError(f"no placeholder for {value!r}")


def states_of(definition: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state of a definition, Map item processors included, by name."""
    found: dict[str, dict[str, Any]] = {}
    for name, state in definition["States"].items():
        found[name] = state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor is not None:
            found.update(states_of(processor))
    return found


_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def json_path(document: Any, path: str, context: Mapping[str, Any] | None = None) -> Any:
    """Evaluate a plain JSONPath (``$.a.b[0]`` or ``$$.Map.Item.Value.x``)."""
    if path.startswith("$$"):
        node: Any = context or {}
        rest = path[2:]
    else:
        node = document
        rest = path[1:]
    for name, index in _PATH_PART.findall(rest):
        node = node[name] if name else node[int(index)]
    return node


def evaluate_parameters(
    template: Mapping[str, Any], document: Any, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Apply a Parameters / ItemSelector block the way Step Functions does, for the plain
    paths and the JsonToString intrinsic this project's definition uses."""
    result: dict[str, Any] = {}
    for key, value in template.items():
        if key.endswith(".$"):
            name = key[:-2]
            if value.startswith("States.JsonToString(") and value.endswith(")"):
                inner = json_path(document, value[len("States.JsonToString(") : -1], context)
                result[name] = json.dumps(inner, separators=(",", ":"))
            else:
                result[name] = json_path(document, value, context)
        elif isinstance(value, dict):
            result[key] = evaluate_parameters(value, document, context)
        else:
            result[key] = value
    return result


def override_environment(
    state: Mapping[str, Any], state_input: Any, context: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The container environment overrides an ecs:runTask state sends, evaluated."""
    (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
    environment: dict[str, str] = {}
    for item in override["Environment"]:
        if "Value.$" in item:
            environment[item["Name"]] = json_path(state_input, item["Value.$"], context)
        else:
            environment[item["Name"]] = item["Value"]
    return environment


def nag_violations(outdir: Path) -> list[tuple[str, str]]:
    """cdk-nag's unacknowledged findings in a cloud assembly: (rule, construct path)."""
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    document = json.loads(report.read_text())
    return [
        (violation["ruleName"], construct["constructPath"])
        for plugin in document["pluginReports"]
        for violation in plugin["violations"]
        for construct in violation["violatingConstructs"]
    ]


_FORMAT = re.compile(r"^States\.Format\('((?:[^'\\]|\\.)*)'((?:,\s*\$[^,)]*)*)\)$")


def evaluate_format(expression: str, document: Any) -> str:
    """Evaluate ``States.Format('a/{}/b', $.x, $.y)`` over ``document`` (plain paths only)."""
    match = _FORMAT.match(expression)
    assert match is not None, expression
    template, arguments = match.groups()
    values = [json_path(document, a.strip()) for a in arguments.split(",") if a.strip()]
    parts = template.split("{}")
    assert len(parts) == len(values) + 1, expression
    text = parts[0]
    for value, part in zip(values, parts[1:], strict=True):
        text += str(value) + part
    return text
