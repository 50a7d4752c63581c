"""CloudFormation's intrinsic, condition and rule functions, evaluated over the rendered template (as a dict).

The one evaluator the tests and the docs tooling share: ``Evaluator`` decides Conditions and Rules and evaluates
values for one set of parameters; what a resource's ``Ref`` or ``Fn::GetAtt`` stands for, and what the rule
functions ``Fn::ValueOf``/``Fn::ValueOfAll`` read from AWS (a subnet's VPC or zone), is given by the caller. A
subclass may render instead of compute (release/docs.py shows values as text). ``references`` lists the names
a value depends on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# What Ref AWS::NoValue evaluates to; lists and mappings drop it.
NO_VALUE: Any = type("NoValue", (), {"__repr__": lambda self: "AWS::NoValue"})()

_SUB_VARIABLE = re.compile(r"\$\{([^}!]+)\}")


class Unresolved(KeyError):
    """The template refers to something the evaluator was given no value for."""


def sub_parts(argument: Any) -> tuple[str, dict[str, Any]]:
    """Fn::Sub's pattern and its local variables, for either form."""
    return (argument, {}) if isinstance(argument, str) else (argument[0], argument[1])


def references(node: Any, conditions: Mapping[str, Any] | None = None) -> set[str]:
    """Names ``node`` refers to: by Ref, by Fn::GetAtt (the logical id), or as ``${Name}``/``${Name.Attr}`` in
    Fn::Sub (not Sub's own variables). With ``conditions`` (the template's), also what an Fn::If's condition
    refers to."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= references(item, conditions)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                pattern, local = sub_parts(value)
                found |= {n.split(".")[0] for n in _SUB_VARIABLE.findall(pattern)} - set(local)
                found |= references(list(local.values()), conditions)
            elif key == "Fn::If" and conditions is not None:
                found |= references(conditions[value[0]], conditions)
                found |= references(value[1:], conditions)
            elif key == "Condition" and conditions is not None and isinstance(value, str):
                found |= references(conditions[value], conditions)
            else:
                found |= references(value, conditions)
    return found


class Evaluator:
    """Evaluates a template's functions for one set of parameter values.

    ``resolve(name)`` answers Ref of anything that is not a parameter or pseudo parameter (resources) and
    ``attribute(logical_id, name)`` answers Fn::GetAtt; ``aws_values`` answers the rule functions, keyed by
    parameter, then attribute (``{"PrivateSubnetIDs": {"AvailabilityZone": ["us-east-1a"]}}``).
    """

    def __init__(
        self,
        template: dict[str, Any],
        parameters: Mapping[str, Any] | None = None,
        pseudo: Mapping[str, str] | None = None,
        resolve: Callable[[str], Any] | None = None,
        attribute: Callable[[str, str], Any] | None = None,
        aws_values: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        self.parameters: dict[str, Any] = {name: _typed(p, p.get("Default", "")) for name, p in declared.items()}
        for name, given in (parameters or {}).items():
            self.parameters[name] = _typed(declared[name], given) if name in declared else given
        self.pseudo = dict(pseudo or {})
        self._resolve = resolve
        self._attribute = attribute
        self.aws_values = aws_values or {}

    # --- names -----------------------------------------------------------------------------------------------

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if self._resolve is not None:
            return self._resolve(name)
        raise Unresolved(name)

    def get_att(self, logical_id: str, attribute: str) -> Any:
        if self._attribute is None:
            raise Unresolved(f"{logical_id}.{attribute}")
        return self._attribute(logical_id, attribute)

    # --- conditions and rules -----------------------------------------------------------------------------

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def if_(self, condition: str, when_true: Any, when_false: Any) -> Any:
        return self.value(when_true if self.condition(condition) else when_false)

    def rule_failures(self) -> list[str]:
        """The AssertDescription of every failing assertion of every rule that applies."""
        failed = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self.value(rule["RuleCondition"]):
                continue
            failed += [a["AssertDescription"] for a in rule["Assertions"] if not self.value(a["Assert"])]
        return failed

    def _aws(self, parameter: str, attribute: str) -> list[Any]:
        value = self.aws_values[parameter][attribute]
        return value if isinstance(value, list) else [value]

    def _value_of_all(self, parameter_type: str, attribute: str) -> list[Any]:
        return [
            v
            for name, p in self.template["Parameters"].items()
            if p["Type"] == parameter_type
            for v in self._aws(name, attribute)
        ]

    # --- values ------------------------------------------------------------------------------------------

    def value(self, node: Any) -> Any:
        """``node`` evaluated: every function computed, AWS::NoValue removed."""
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, argument),) = node.items()
            function = self._functions().get(key)
            if function is not None:
                return function(argument)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not NO_VALUE}

    def decide(self, node: Any) -> Any:
        """``node`` with every Fn::If decided and AWS::NoValue removed; other functions left as written."""
        if isinstance(node, list):
            return [v for v in (self.decide(item) for item in node) if v is not NO_VALUE]
        if isinstance(node, dict):
            if node == {"Ref": "AWS::NoValue"}:
                return NO_VALUE
            if set(node) == {"Fn::If"}:
                condition, when_true, when_false = node["Fn::If"]
                return self.decide(when_true if self.condition(condition) else when_false)
            return {k: v for k, v in ((k, self.decide(v)) for k, v in node.items()) if v is not NO_VALUE}
        return node

    def sub(self, argument: Any) -> Any:
        pattern, local = sub_parts(argument)
        values = {name: self.value(v) for name, v in local.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return str(values[name])
            if "." in name and name.split(".")[0] not in self.pseudo:
                return str(self.get_att(*name.split(".", 1)))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(substitute, pattern)

    def join(self, argument: Any) -> Any:
        return argument[0].join(str(v) for v in self.value(argument[1]))

    def select(self, argument: Any) -> Any:
        return self.value(argument[1])[int(argument[0])]

    def split(self, argument: Any) -> Any:
        return str(self.value(argument[1])).split(argument[0])

    def _functions(self) -> dict[str, Callable[[Any], Any]]:
        v = self.value
        return {
            "Ref": self.ref,
            "Fn::GetAtt": lambda a: self.get_att(*(a if isinstance(a, list) else a.split(".", 1))),
            "Fn::Sub": self.sub,
            "Fn::FindInMap": lambda a: self.template["Mappings"][v(a[0])][v(a[1])][v(a[2])],
            "Fn::Join": self.join,
            "Fn::Select": self.select,
            "Fn::Split": self.split,
            "Fn::If": lambda a: self.if_(*a),
            "Condition": self.condition,
            "Fn::Equals": lambda a: str(v(a[0])) == str(v(a[1])),
            "Fn::Not": lambda a: not v(a[0]),
            "Fn::And": lambda a: all(v(c) for c in a),
            "Fn::Or": lambda a: any(v(c) for c in a),
            # Rule functions.
            "Fn::Contains": lambda a: str(v(a[1])) in [str(x) for x in v(a[0])],
            "Fn::EachMemberEquals": lambda a: all(str(x) == str(v(a[1])) for x in v(a[0])),
            "Fn::EachMemberIn": lambda a: {str(x) for x in v(a[0])} <= {str(x) for x in v(a[1])},
            "Fn::ValueOf": lambda a: self._aws(a[0], a[1]),
            "Fn::ValueOfAll": lambda a: self._value_of_all(a[0], a[1]),
            "Fn::RefAll": lambda a: [self.ref(n) for n, p in self.template["Parameters"].items() if p["Type"] == a],
        }


def _typed(parameter: Mapping[str, Any], value: Any) -> Any:
    """A parameter's value as Ref gives it: a list for list types, a string otherwise."""
    if parameter["Type"].startswith("List<") or parameter["Type"] == "CommaDelimitedList":
        return value if isinstance(value, list) else [item for item in str(value).split(",") if item]
    return str(value)
