"""The synthesized stack, read the way CloudFormation would deploy it, against local stand-ins.

A template's values are full of intrinsic functions (``Ref``, ``Fn::GetAtt``, ``Fn::Join``,
``Fn::Sub``). ``Resolver`` turns them into the names of what the harness creates in moto:
buckets, the cluster, the log group. Subnets and security groups become placeholders, since
nothing here has a network. A reference to anything else fails loudly, so a state machine that
starts to depend on a new resource cannot be run with a silently wrong value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ACCOUNT: Final = "123456789012"
REGION: Final = "us-east-1"
PSEUDO_PARAMETERS: Final = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}
_SUB_VARIABLE: Final = re.compile(r"\$\{([^}!][^}]*)\}")


def synthesize(outdir: Path, stack_name: str = "EcsQuery", **props: Any) -> Template:
    """Synthesize a ``QueryProcessingStack`` in this process, as examples/app.py does.

    CDK's built-in CloudFormation validation is off: it is slow, and tests/cdk runs it.
    """
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import aws_cdk as cdk

    from ecs_query.cdk import QueryProcessingStack

    app = cdk.App(outdir=str(outdir), builtin_cloud_formation_validation=False)
    QueryProcessingStack(app, stack_name, **props)
    assembly = app.synth()
    document = assembly.get_stack_by_name(stack_name).template
    return Template(stack_name, json.loads(json.dumps(document)))


@dataclass(frozen=True)
class Template:
    """One synthesized CloudFormation template."""

    stack_name: str
    document: dict[str, Any]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.document["Resources"])

    def one(self, resource_type: str) -> tuple[str, dict[str, Any]]:
        """The logical id and properties of the only resource of ``resource_type``."""
        found = [
            (logical_id, resource.get("Properties", {}))
            for logical_id, resource in self.resources.items()
            if resource["Type"] == resource_type
        ]
        if len(found) != 1:
            names = [logical_id for logical_id, _ in found]
            raise LookupError(f"expected one {resource_type} in the template, found {names}")
        return found[0]

    def output_ref(self, output: str) -> str:
        """The logical id an output's ``Ref`` names (InputBucketName, ClusterName, ...)."""
        value = self.document["Outputs"][output]["Value"]
        if not isinstance(value, dict) or "Ref" not in value:
            raise LookupError(f"output {output} is not a Ref: {value!r}")
        return str(value["Ref"])

    def resource_type(self, logical_id: str) -> str:
        return str(self.resources[logical_id]["Type"])


@dataclass
class Resolver:
    """Makes template values concrete: ``refs`` answer ``Ref``, ``attributes`` ``Fn::GetAtt``.

    Subnets and security groups not named explicitly get stable placeholders.
    """

    template: Template
    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic function replaced by its local value."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), *_ = value.items()
            if key == "Ref":
                return self.ref(str(argument))
            if key == "Fn::GetAtt":
                name, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
                return self.get_att(str(name), str(attribute))
            if key == "Fn::Join":
                delimiter, parts = argument
                return str(delimiter).join(str(self.resolve(part)) for part in parts)
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::Select":
                index, items = argument
                return self.resolve(items)[int(self.resolve(index))]
            if key.startswith("Fn::") or key == "Condition":
                raise ValueError(f"the harness does not resolve {key}: {value!r}")
        return {key: self.resolve(item) for key, item in value.items()}

    def ref(self, name: str) -> str:
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if name == "AWS::StackName":
            return self.template.stack_name
        if name in self.refs:
            return self.refs[name]
        kind = self.template.resource_type(name)
        if kind == "AWS::EC2::Subnet":
            return "subnet-" + _short_hash(name)
        raise LookupError(
            f"the template refers to {name} ({kind}), which the e2e harness does not create; "
            "give it a local value in tests/e2e/harness.py"
        )

    def get_att(self, name: str, attribute: str) -> str:
        if (name, attribute) in self.attributes:
            return self.attributes[name, attribute]
        kind = self.template.resource_type(name)
        if kind == "AWS::EC2::SecurityGroup" and attribute == "GroupId":
            return "sg-" + _short_hash(name)
        raise LookupError(
            f"the template refers to {name}.{attribute} ({kind}), which the e2e harness does "
            "not create; give it a local value in tests/e2e/harness.py"
        )

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, str):
            text, variables = argument, {}
        else:
            text, variables = argument[0], argument[1]

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name:
                resource, attribute = name.split(".", 1)
                return self.get_att(resource, attribute)
            return self.ref(name)

        return _SUB_VARIABLE.sub(replace, str(text))


def state_machine_definition(template: Template, resolver: Resolver) -> dict[str, Any]:
    """The state machine's definition as Step Functions would receive it."""
    _, properties = template.one("AWS::StepFunctions::StateMachine")
    text = resolver.resolve(properties["DefinitionString"])
    return dict(json.loads(text))


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:17]
