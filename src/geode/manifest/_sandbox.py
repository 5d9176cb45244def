"""The sandbox templates render in, and the budget of what they build.

Templates may read names from the namespaces (``secrets``, ``geode``) and the parts of a
certificate secret, nothing else; the values they reach are opaque (``Opaque``) until a filter
turns them into text. Every value a template builds is counted (``TemplateBudget``), so that no
template of a manifest can take more memory or time than its budget, whatever it says.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "MAX_RENDERED_BYTES",
    "MAX_TEMPLATE_TOKENS",
    "MAX_TEMPLATE_WORK",
    "NEEDS_FILTER",
    "SERVICE_KEY",
    "CertificateView",
    "Namespace",
    "Opaque",
    "Sandbox",
    "TemplateBudget",
    "budgets",
    "charge",
    "finalize",
]

MAX_RENDERED_BYTES = 1 << 20
# What one rendering may build, counted in bytes (characters) of the values its operators,
# filters and ``~`` produce: four times what it may output, room for any template that builds
# its output piece by piece, and the bound on its memory and time whatever it does.
MAX_TEMPLATE_WORK = 4 * MAX_RENDERED_BYTES


# The tokens of one template (``{{``, names, operators, literals, text between tags): what
# parsing and compiling it costs. A template that renders a file has a few dozen.
MAX_TEMPLATE_TOKENS = 4096


class TemplateBudget:
    """What templates may still cost (bytes built, or tokens parsed); shared by every template
    that counts against it (the dry-rendering of a whole manifest has one budget for all its
    templates)."""

    def __init__(self, limit: int, refusal: str = "template builds more than {} bytes") -> None:
        self.limit = limit
        self.refusal = refusal
        self.used = 0

    def charge(self, size: int) -> None:
        """Count ``size`` more before it is spent; refuse past the limit."""
        self.used += size
        if self.used > self.limit:
            raise SecurityError(self.refusal.format(self.limit))


_BUDGETS: contextvars.ContextVar[tuple[TemplateBudget, ...]] = contextvars.ContextVar(
    "geode_template_budgets", default=()
)


def charge(size: int) -> None:
    for budget in _BUDGETS.get():
        budget.charge(size)


@contextmanager
def budgets(*budgets: TemplateBudget) -> Iterator[None]:
    token = _BUDGETS.set(_BUDGETS.get() + budgets)
    try:
        yield
    finally:
        _BUDGETS.reset(token)


def _size(value: Any) -> int:
    """The bytes ``value`` takes as text (an int of n bits prints about n/3 digits)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    return 32  # a float, a bool or None


class Opaque:
    """A value a template may only pass to a filter: it refuses ``str``, ``repr`` and
    ``format``, so neither printing, ``~`` nor ``%`` can turn it into text."""

    __slots__ = ("_hint", "_inner")

    def __init__(self, inner: Any, hint: str) -> None:
        self._inner = inner
        self._hint = hint

    def _refuse(self, *_: Any) -> str:
        raise jinja2.TemplateError(self._hint)

    __str__ = __repr__ = __format__ = _refuse


NEEDS_FILTER = "a secret or certificate needs a filter: pem, hex, raw or base64"
SERVICE_KEY = object()


class CertificateView(Opaque):
    """``secrets.<certificate>`` in templates."""

    __slots__ = ()

    @property
    def cert(self) -> Opaque:
        return Opaque(self._inner.cert, NEEDS_FILTER)

    @property
    def private(self) -> Opaque:
        return Opaque(self._inner.private, NEEDS_FILTER)

    @property
    def public(self) -> Opaque:
        return Opaque(self._inner.public, NEEDS_FILTER)


class Namespace(Opaque):
    """``secrets`` and ``geode`` in templates: names only, no methods (a secret may be called
    ``keys`` or ``items``)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        return self._inner[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._inner[key]
        except KeyError:
            raise AttributeError(key) from None


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to the sandbox's ``counted_concat``, which counts what it joins."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.counted_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_TEXT_OPERANDS = str | int | float | None


def _check_operand(value: Any) -> None:
    """The errors an operand gets on its own: a secret needs a filter, an undefined name is
    undefined (before the operators' "text and numbers only")."""
    if isinstance(value, Opaque):
        value._refuse()
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined: raises the error that names what is undefined


class Sandbox(ImmutableSandboxedEnvironment):
    """Templates may read names from the namespaces and the parts of a certificate secret,
    nothing else: no other attribute is reachable and nothing can be called.

    Every value a template builds is counted against its budget (``TemplateBudget``) before it
    is built: every binary operator, ``~`` and every filter. Only text and numbers take part in
    operators (a list literal is refused before rendering, see ``referenced_names``), so no value
    can stand for more than its own size: nothing repeats a reference, nothing compares or prints
    a structure larger than what was counted.
    """

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+", "-", "/", "//"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, CertificateView):
            return attr in ("cert", "private", "public")
        return isinstance(obj, Namespace) and not attr.startswith("_")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        raise SecurityError("templates cannot call methods; use a filter: pem, hex, raw, base64")

    def counted_concat(self, parts: tuple[Any, ...]) -> str:
        texts = []
        for part in parts:
            _check_operand(part)
            if not isinstance(part, _TEXT_OPERANDS):
                raise SecurityError(f"~ joins text and numbers, not {type(part).__name__}")
            texts.append(part if isinstance(part, str) else str(part))
        charge(sum(len(text) for text in texts))
        return "".join(texts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        for operand in (left, right):
            _check_operand(operand)
            if not isinstance(operand, _TEXT_OPERANDS) or operand is None:
                raise SecurityError(
                    f"{operator} takes text and numbers, not {type(operand).__name__}"
                )
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed; use ~")
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large in a template")
            if isinstance(left, int) and left.bit_length() * abs(int(right)) > 1 << 14:
                raise SecurityError("template value too large")
        elif operator == "*":
            for text, count in ((left, right), (right, left)):
                if isinstance(text, str) and isinstance(count, int):
                    if len(text) * count > MAX_RENDERED_BYTES:
                        raise SecurityError("template value too large")
                    charge(len(text) * max(count, 0))
            both_ints = isinstance(left, int) and isinstance(right, int)
            if both_ints and left.bit_length() + right.bit_length() > 1 << 14:
                raise SecurityError("template value too large")
        elif operator == "+" and isinstance(left, str) and isinstance(right, str):
            charge(len(left) + len(right))
        result = super().call_binop(context, operator, left, right)
        if not isinstance(result, str):  # text was counted before it was built
            charge(_size(result))
        return result


def finalize(value: Any) -> Any:
    """Every printed value must be text (or a number): secrets only print through filters."""
    if isinstance(value, Opaque):
        value._refuse()
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    raise jinja2.TemplateError(NEEDS_FILTER)
