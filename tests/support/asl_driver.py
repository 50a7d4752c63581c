"""The template's own workflow definition, executed on a compressed clock: a discrete-event Step Functions.

moto's interpreter runs one thread per execution and sleeps through every Retry and Wait in real time; a thousand
executions waiting hours for import slots would take hours. This driver runs the same ASL (the file under
statemachine/, placeholders substituted as the template does) on a virtual clock: the states the definition uses
(Pass, Task, Choice, Succeed, Fail), Parameters with the intrinsic functions it calls, InputPath/ResultPath,
Retry (ErrorEquals, IntervalSeconds, BackoffRate, MaxAttempts, MaxDelaySeconds, JitterStrategy FULL) and Catch in
Step Functions' order, ``lambda:invoke.waitForTaskToken`` with TimeoutSecondsPath and SendTaskSuccess, and
StartExecution's idempotency on the execution name. It raises on anything else in a definition, so a new construct
in the ASL fails the run instead of being skipped.

A Task hands its input to ``invoke(function_name, payload) -> Invocation`` (the scale run's Lambda model: real
handlers, a concurrency limit, Lambda's error names) and resumes when the invocation's modelled duration has
passed. Every state entered and every retry is counted as a state transition, as Step Functions bills them.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LAMBDA_ARN = re.compile(r"^arn:aws:lambda:[^:]+:\d{12}:function:[^:]+$")
WAIT_FOR_TOKEN = "arn:aws:states:::lambda:invoke.waitForTaskToken"


class Scheduler:
    """A virtual clock and the callbacks due on it, run in time order (ties in the order they were scheduled)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._sequence), callback))

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        self.at(self.now + delay, callback)

    def run(self, until: float = float("inf")) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, callback = heapq.heappop(self._queue)
            self.now = when
            callback()

    @property
    def idle(self) -> bool:
        return not self._queue


@dataclass
class Invocation:
    """What a Lambda invocation returned to Step Functions after ``seconds``: a result, or an error name."""

    seconds: float
    result: Any = None
    error: str = ""
    cause: str = ""


class TaskFailed(Exception):
    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(error, cause)
        self.error, self.cause = error, cause


class ClientError(Exception):
    """What the Step Functions API answers with an error (code, message): the caller's SDK raises it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code, self.message = code, message


# --- paths and intrinsic functions (the subset the definition uses; anything else raises) --------------------


def _path_parts(path: str) -> list[str]:
    if path == "$":
        return []
    if not path.startswith("$."):
        raise ValueError(f"unsupported path {path!r}")
    return path[2:].split(".")


def read_path(document: Any, path: str) -> Any:
    value = document
    for part in _path_parts(path):
        if not isinstance(value, dict) or part not in value:
            raise TaskFailed("States.Runtime", f"the path {path!r} does not exist in the input")
        value = value[part]
    return value


def write_path(document: Any, path: str | None, value: Any) -> Any:
    """ResultPath: ``value`` placed into (a copy of) ``document``; "$" replaces it, null discards the result."""
    if path is None:
        return document
    parts = _path_parts(path)
    if not parts:
        return value
    result = copy.deepcopy(document)
    target = result
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value
    return result


_INTRINSIC = re.compile(r"^(States\.\w+)\((.*)\)$")


def _arguments(text: str) -> list[str]:
    arguments, depth, quoted, current = [], 0, False, ""
    for char in text:
        if char == "'" and depth == 0:
            quoted = not quoted
        if char == "," and not quoted and depth == 0:
            arguments.append(current.strip())
            current = ""
            continue
        depth += (char == "(") - (char == ")") if not quoted else 0
        current += char
    if current.strip():
        arguments.append(current.strip())
    return arguments


def evaluate(expression: str, document: Any, context: dict[str, Any]) -> Any:
    """A ".$" value: a path into the input, "$$." into the context object, or an intrinsic function."""
    if expression.startswith("$$."):
        return read_path(context, "$." + expression[3:])
    if expression.startswith("$"):
        return read_path(document, expression)
    match = _INTRINSIC.match(expression)
    if not match:
        raise ValueError(f"unsupported expression {expression!r}")
    name, arguments = match.group(1), [_argument(a, document, context) for a in _arguments(match.group(2))]
    if name == "States.StringToJson":
        return json.loads(arguments[0])
    if name == "States.MathAdd":
        return arguments[0] + arguments[1]
    raise ValueError(f"unsupported intrinsic function {name}")


def _argument(text: str, document: Any, context: dict[str, Any]) -> Any:
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1]
    if text.startswith("$") or text.startswith("States."):
        return evaluate(text, document, context)
    return json.loads(text)


def apply_parameters(template: Any, document: Any, context: dict[str, Any]) -> Any:
    if isinstance(template, dict):
        result = {}
        for key, value in template.items():
            if key.endswith(".$"):
                result[key[:-2]] = evaluate(value, document, context)
            else:
                result[key] = apply_parameters(value, document, context)
        return result
    if isinstance(template, list):
        return [apply_parameters(item, document, context) for item in template]
    return template


# --- Choice rules --------------------------------------------------------------------------------------------

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "BooleanEquals": lambda a, b: isinstance(a, bool) and a == b,
    "StringEquals": lambda a, b: isinstance(a, str) and a == b,
    "NumericEquals": lambda a, b: isinstance(a, int | float) and a == b,
    "NumericGreaterThanEquals": lambda a, b: isinstance(a, int | float) and a >= b,
    "NumericLessThan": lambda a, b: isinstance(a, int | float) and a < b,
}


def choice_matches(rule: dict[str, Any], document: Any) -> bool:
    if "And" in rule:
        return all(choice_matches(r, document) for r in rule["And"])
    if "Or" in rule:
        return any(choice_matches(r, document) for r in rule["Or"])
    if "Not" in rule:
        return not choice_matches(rule["Not"], document)
    value = read_path(document, rule["Variable"])
    for name, compare in _COMPARISONS.items():
        if name in rule:
            return compare(value, rule[name])
        if name + "Path" in rule:
            return compare(value, read_path(document, rule[name + "Path"]))
    raise ValueError(f"unsupported Choice rule {sorted(rule)}")


def _error_matches(names: list[str], error: str) -> bool:
    if "States.ALL" in names:
        return True
    if "States.TaskFailed" in names and error != "States.Timeout":
        return True
    return error in names


# --- executions ----------------------------------------------------------------------------------------------


@dataclass
class Execution:
    name: str
    arn: str
    input: dict[str, Any]
    started_at: float
    status: str = "RUNNING"
    state: str = ""
    document: Any = None
    output: Any = None
    error: str = ""
    cause: str = ""
    ended_at: float | None = None
    states_entered: list[str] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)  # per retrier of the current state
    token: str = ""  # the task token a WaitForCompletion is waiting on
    wait_epoch: int = 0


@dataclass
class Statistics:
    transitions: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # "<state> <error>"
    caught: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    tokens_sent: int = 0


class StepFunctions:
    """One state machine's executions on a Scheduler's clock."""

    def __init__(
        self,
        definition: dict[str, Any],
        state_machine_arn: str,
        scheduler: Scheduler,
        invoke: Callable[[str, dict[str, Any]], Invocation],
        rng: random.Random,
    ) -> None:
        self.definition = definition
        self.state_machine_arn = state_machine_arn
        self.scheduler = scheduler
        self.invoke = invoke
        self.rng = rng
        self.executions: dict[str, Execution] = {}
        self.by_token: dict[str, Execution] = {}
        self.stats = Statistics()
        self._tokens = itertools.count(1)

    # the API the functions call (through their boto3 client, bridged here)

    def execution_arn(self, name: str) -> str:
        return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"

    def start_execution(self, name: str, execution_input: dict[str, Any]) -> Execution:
        if name in self.executions:
            raise ClientError("ExecutionAlreadyExists", f"Execution Already Exists: '{self.execution_arn(name)}'")
        execution = Execution(name, self.execution_arn(name), execution_input, self.scheduler.now)
        execution.document = copy.deepcopy(execution_input)
        self.executions[name] = execution
        self.scheduler.after(0, lambda: self._enter(execution, self.definition["StartAt"]))
        return execution

    def describe_execution(self, arn: str) -> Execution:
        name = arn.rsplit(":", 1)[-1]
        if name not in self.executions or self.executions[name].arn != arn:
            raise ClientError("ExecutionDoesNotExist", f"Execution Does Not Exist: '{arn}'")
        return self.executions[name]

    def send_task_success(self, token: str, output: str) -> None:
        execution = self.by_token.pop(token, None)
        if execution is None or execution.token != token or execution.status != "RUNNING":
            raise ClientError("TaskTimedOut", "Task Timed Out: the task token is no longer waited on")
        self.stats.tokens_sent += 1
        execution.token = ""
        execution.wait_epoch += 1
        state = self.definition["States"][execution.state]
        self.scheduler.after(0, lambda: self._task_succeeded(execution, state, json.loads(output)))

    # the interpreter

    def _enter(self, execution: Execution, name: str) -> None:
        execution.state = name
        execution.attempts = Counter()
        execution.states_entered.append(name)
        self.stats.transitions += 1
        state = self.definition["States"][name]
        kind = state["Type"]
        try:
            if kind == "Pass":
                self._pass(execution, state)
            elif kind == "Task":
                self._task(execution, state)
            elif kind == "Choice":
                self._choice(execution, state)
            elif kind == "Succeed":
                self._end(execution, "SUCCEEDED", output=execution.document)
            elif kind == "Fail":
                self._end(execution, "FAILED", error=state.get("Error", ""), cause=state.get("Cause", ""))
            else:
                raise ValueError(f"state type {kind} is not supported by the driver")
        except TaskFailed as failure:
            self._end(execution, "FAILED", error=failure.error, cause=failure.cause)

    def _context(self, execution: Execution) -> dict[str, Any]:
        return {"Execution": {"Id": execution.arn, "Name": execution.name}, "State": {"Name": execution.state}}

    def _effective_input(self, execution: Execution, state: dict[str, Any], context: dict[str, Any]) -> Any:
        document = read_path(execution.document, state.get("InputPath", "$"))
        if "Parameters" in state:
            return apply_parameters(state["Parameters"], document, context)
        return document

    def _next(self, execution: Execution, state: dict[str, Any]) -> None:
        if state.get("End"):
            self._end(execution, "SUCCEEDED", output=execution.document)
        else:
            self.scheduler.after(0, lambda: self._enter(execution, state["Next"]))

    def _pass(self, execution: Execution, state: dict[str, Any]) -> None:
        result = (
            state["Result"] if "Result" in state else self._effective_input(execution, state, self._context(execution))
        )
        execution.document = write_path(execution.document, state.get("ResultPath", "$"), result)
        self._next(execution, state)

    def _choice(self, execution: Execution, state: dict[str, Any]) -> None:
        for rule in state["Choices"]:
            if choice_matches(rule, execution.document):
                self.scheduler.after(0, lambda target=rule["Next"]: self._enter(execution, target))
                return
        if "Default" not in state:
            raise TaskFailed("States.NoChoiceMatched", f"no choice of {execution.state} matched")
        self.scheduler.after(0, lambda: self._enter(execution, state["Default"]))

    def _task(self, execution: Execution, state: dict[str, Any]) -> None:
        resource = state["Resource"]
        context = self._context(execution)
        if resource == WAIT_FOR_TOKEN:
            token = f"token-{next(self._tokens)}"
            context["Task"] = {"Token": token}
            parameters = self._effective_input(execution, state, context)
            execution.token, execution.wait_epoch = token, execution.wait_epoch + 1
            self.by_token[token] = execution
            epoch = execution.wait_epoch
            timeout = (
                read_path(execution.document, state["TimeoutSecondsPath"]) if "TimeoutSecondsPath" in state else None
            )
            timeout = state.get("TimeoutSeconds", timeout)
            if timeout is not None:
                self.scheduler.after(float(timeout), lambda: self._wait_timed_out(execution, state, epoch))
            invocation = self.invoke(parameters["FunctionName"], parameters["Payload"])
            if invocation.error:
                self.scheduler.after(invocation.seconds, lambda: self._wait_failed(execution, state, epoch, invocation))
            return
        if not LAMBDA_ARN.match(resource):
            raise ValueError(f"Task resource {resource} is not supported by the driver")
        invocation = self.invoke(resource, self._effective_input(execution, state, context))
        if invocation.error:
            self.scheduler.after(
                invocation.seconds, lambda: self._task_error(execution, state, invocation.error, invocation.cause)
            )
        else:
            self.scheduler.after(invocation.seconds, lambda: self._task_succeeded(execution, state, invocation.result))

    def _wait_timed_out(self, execution: Execution, state: dict[str, Any], epoch: int) -> None:
        if execution.wait_epoch != epoch or execution.status != "RUNNING":
            return
        self.stats.timeouts += 1
        self._release_token(execution)
        self._task_error(execution, state, "States.Timeout", "the task did not send its token in time")

    def _wait_failed(self, execution: Execution, state: dict[str, Any], epoch: int, invocation: Invocation) -> None:
        if execution.wait_epoch != epoch or execution.status != "RUNNING":
            return
        self._release_token(execution)
        self._task_error(execution, state, invocation.error, invocation.cause)

    def _release_token(self, execution: Execution) -> None:
        self.by_token.pop(execution.token, None)
        execution.token = ""
        execution.wait_epoch += 1

    def _task_succeeded(self, execution: Execution, state: dict[str, Any], result: Any) -> None:
        if execution.status != "RUNNING":
            return
        execution.document = write_path(execution.document, state.get("ResultPath", "$"), result)
        self._next(execution, state)

    def _task_error(self, execution: Execution, state: dict[str, Any], error: str, cause: str) -> None:
        for number, retrier in enumerate(state.get("Retry", [])):
            if not _error_matches(retrier["ErrorEquals"], error):
                continue
            attempt = execution.attempts[number]
            if attempt < retrier.get("MaxAttempts", 3):
                execution.attempts[number] += 1
                delay = retrier.get("IntervalSeconds", 1) * retrier.get("BackoffRate", 2.0) ** attempt
                if "MaxDelaySeconds" in retrier:
                    delay = min(delay, retrier["MaxDelaySeconds"])
                if retrier.get("JitterStrategy") == "FULL":
                    delay = self.rng.uniform(0, delay)
                self.stats.retries[f"{execution.state} {error}"] += 1
                self.stats.transitions += 1  # Step Functions bills each retry as a state transition
                self.scheduler.after(delay, lambda: self._task(execution, state))
                return
            break  # the first retrier that matches decides; exhausted, the error goes to Catch
        for catcher in state.get("Catch", []):
            if _error_matches(catcher["ErrorEquals"], error):
                self.stats.caught[f"{execution.state} {error}"] += 1
                result = {"Error": error, "Cause": cause}
                execution.document = write_path(execution.document, catcher.get("ResultPath", "$"), result)
                self.scheduler.after(0, lambda target=catcher["Next"]: self._enter(execution, target))
                return
        self._end(execution, "FAILED", error=error, cause=cause)

    def _end(self, execution: Execution, status: str, *, output: Any = None, error: str = "", cause: str = "") -> None:
        execution.status, execution.output = status, output
        execution.error, execution.cause = error, cause
        execution.ended_at = self.scheduler.now
        self.by_token.pop(execution.token, None)
