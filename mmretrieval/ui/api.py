"""The HTTP API's own input checks: a readable error for every wrong argument, defaults for omitted ones.

Gradio checks only that an event got *at least* as many values as it has inputs, and a value of the
wrong type fails deep inside a component's preprocessing; with ``show_error=False`` both reach the
caller as ``{"error": null}``. :func:`install_checks` makes each call against the endpoint's own
parameters first (names from the handler's signature, defaults from the handler or the component),
fills omitted trailing arguments that have a default, and answers anything else with a ``gr.Error``
that names the endpoint, the argument, what it must be and what came.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from .toast import ToastError

logger = logging.getLogger(__name__)

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Parameter:
    """One argument of an endpoint, as a caller sees it."""

    name: str  # the handler's parameter name (what gradio_client's view_api shows)
    kind: str  # "text", "number", "image", "bool", "choice" or "any"
    default: Any  # _NO_DEFAULT when the caller must give it
    choices: tuple[str, ...] = ()  # allowed values of a "choice"
    bounds: tuple[float | None, float | None] = (None, None)  # a "number"'s least and greatest, where it has them

    def describe(self) -> str:
        kinds = {"text": "a string", "number": "a number", "image": "an image file (handle_file(...)) or null",
                 "bool": "true or false", "any": "any value"}
        if self.kind == "choice":
            return f"one of {', '.join(map(repr, self.choices))}"
        least, greatest = self.bounds
        if self.kind == "number" and least is not None and greatest is not None:
            return f"a number from {least:g} to {greatest:g}"
        return kinds[self.kind]


def endpoint_parameters(block_fn: Any) -> list[Parameter]:
    """The caller-visible parameters of one event (hidden state inputs are not the caller's to give)."""
    signature = _signature(block_fn.fn)
    parameters = []
    for index, component in enumerate(block_fn.inputs):
        if getattr(component, "skip_api", False) or getattr(component, "stateful", False):
            continue
        declared = signature[index] if index < len(signature) else None
        name = declared.name if declared is not None else f"argument_{index + 1}"
        # As Gradio's API page decides it: the component's initial value, else the handler's default.
        default = _NO_DEFAULT
        if getattr(component, "value", None) is not None:
            default = component.value
        elif declared is not None and declared.default is not inspect.Parameter.empty:
            default = declared.default
        kind, choices = _kind_of(component)
        bounds = (getattr(component, "minimum", None), getattr(component, "maximum", None)) if kind == "number" \
            else (None, None)
        parameters.append(Parameter(name, kind, default, choices, bounds))
    return parameters


def check_arguments(endpoint: str, parameters: list[Parameter], values: list[Any]) -> list[Any]:
    """``values`` completed with defaults for omitted trailing arguments, each checked against its parameter.

    Raises:
        gr.Error: too many or too few values, or one of the wrong type; the message names the endpoint,
            the argument and what it must be.
    """
    usage = f"{endpoint}({', '.join(p.name if p.default is _NO_DEFAULT else p.name + '=…' for p in parameters)})"
    if len(values) > len(parameters):
        raise _error(f"{endpoint} takes at most {len(parameters)} arguments, got {len(values)}: call {usage}")
    missing = [p.name for p in parameters[len(values):] if p.default is _NO_DEFAULT]
    if missing:
        raise _error(f"{endpoint} needs {', '.join(missing)} (got {len(values)} of {len(parameters)} "
                     f"arguments): call {usage}")
    completed = list(values) + [p.default for p in parameters[len(values):]]
    for parameter, value in zip(parameters, completed):
        if not _fits(parameter, value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise _error(f"{endpoint}: {parameter.name} must be {parameter.describe()}, got {shown} "
                         f"({type(value).__name__})")
    return completed


def install_checks(app: gr.Blocks) -> gr.Blocks:
    """Make ``app``'s named endpoints check their arguments with :func:`check_arguments` first.

    Wraps the two Blocks methods every call goes through, on this instance only (a ``gr.Blocks``
    subclass would make Gradio rewrite its own stub files in site-packages).
    """
    validate, preprocess = app.validate_inputs, app.preprocess_data

    def validate_inputs(block_fn: Any, inputs: list[Any]) -> None:
        if block_fn.api_name and block_fn.api_visibility != "private" and block_fn.fn is not None and not any(
                getattr(c, "skip_api", False) or getattr(c, "stateful", False) for c in block_fn.inputs):
            inputs[:] = check_arguments(f"/{block_fn.api_name}", endpoint_parameters(block_fn), list(inputs))
        validate(block_fn, inputs)

    async def preprocess_data(block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:  # a value our checks let through and a component still refused
            logger.info("refused input to %s: %s", block_fn.api_name, exc)
            raise _error(f"/{block_fn.api_name or 'this action'}: an argument could not be read "
                         f"({type(exc).__name__}); see the API page for each argument's type") from exc

    app.validate_inputs = validate_inputs  # type: ignore[method-assign]
    app.preprocess_data = preprocess_data  # type: ignore[method-assign]
    return app


def _signature(fn: Any) -> list[inspect.Parameter]:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    # gr.Progress and event data are Gradio's to fill, not the caller's.
    return [p for p in parameters if not isinstance(p.default, gr.Progress)
            and p.annotation not in (gr.SelectData, "gr.SelectData") and p.kind is not p.VAR_KEYWORD]


def _kind_of(component: Any) -> tuple[str, tuple[str, ...]]:
    if isinstance(component, gr.Dropdown) and getattr(component, "allow_custom_value", False):
        return "text", ()
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        return "choice", tuple(str(c[1] if isinstance(c, tuple) else c) for c in component.choices or ())
    if isinstance(component, (gr.Textbox,)):
        return "text", ()
    if isinstance(component, (gr.Number, gr.Slider)):
        return "number", ()
    if isinstance(component, gr.Image):
        return "image", ()
    if isinstance(component, gr.Checkbox):
        return "bool", ()
    return "any", ()


def _fits(parameter: Parameter, value: Any) -> bool:
    if parameter.kind == "text":
        return value is None or isinstance(value, str)
    if parameter.kind == "number":
        if value is None:
            return True
        least, greatest = parameter.bounds  # (Gradio would refuse what is outside, naming no argument)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (least is None or value >= least) and (greatest is None or value <= greatest)
    if parameter.kind == "bool":
        return isinstance(value, bool)
    if parameter.kind == "image":
        return value is None or (isinstance(value, dict) and isinstance(value.get("path") or value.get("url"), str))
    if parameter.kind == "choice":
        return value in parameter.choices
    return True


def _error(message: str) -> gr.Error:
    # These checks run before any handler (so before user_errors): the message, which quotes what came, is
    # escaped here.
    return ToastError(message)
