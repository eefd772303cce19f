"""A small, safe evaluator of arithmetic expressions over numeric columns (numpy arrays).

Pre- and postprocessing expressions in a design schema are text written by whoever publishes a training
event, so they are never given to Python's eval. They are parsed with ``ast.parse(mode="eval")`` and the
tree is checked against a whitelist before anything is evaluated; evaluation walks the checked tree and
calls numpy only. The language:

- numbers (int, float; ``True``/``False`` as 1/0), names (columns, constants, earlier outputs)
- ``+ - * / // % **``, unary ``-``/``+``, ``not``
- comparisons ``== != < <= > >=`` (chains allowed) and ``and``/``or``: they give 1.0 or 0.0 per row
  (a value counts as true when it is not 0)
- ``a if cond else b`` (per row, like numpy.where)
- functions: abs, sqrt, log, log1p, exp (one argument), min, max (two or more: element-wise),
  clip(x, low, high), round(x) or round(x, digits) with constant digits, where(cond, a, b)

Everything else (attribute access, subscripts, lambdas, comprehensions, strings, keyword arguments, any other
function) is rejected at parse time with an :class:`ExpressionError` naming the expression and the construct.

This module runs in two places: in the trainer, and inside an inference server that serves a trained model
(copied into the model's folder, see servers/designed_model/__init__.py). So it imports only the standard
library and numpy, and only relative imports may be added.
All values are float64, so no expression can build huge Python integers; ``**`` takes exponents of at most
``MAX_EXPONENT`` in absolute value; a result that is not finite (log of 0, division by 0) is an error.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


class ExpressionError(ValueError):
    """An expression is malformed, unsafe, too large, or fails to evaluate; the message names it."""


FloatArray = npt.NDArray[np.float64]
Value = FloatArray | float

MAX_EXPRESSION_CHARS = 2_000
MAX_NODES = 256
MAX_DEPTH = 32
MAX_EXPONENT = 64.0
MAX_ROUND_DIGITS = 15

_BINARY_FUNCTIONS: dict[type[ast.operator], Callable[[Value, Value], object]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_COMPARE_OPS: dict[type[ast.cmpop], Callable[[Value, Value], npt.NDArray[np.bool_] | np.bool_ | bool]] = {
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
}
_UNARY_FUNCTIONS: dict[str, Callable[[Value], Value]] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": np.log,
    "log1p": np.log1p,
    "exp": np.exp,
}
# name -> (least, most) argument count; None means any number above the least.
_FUNCTION_ARITY: dict[str, tuple[int, int | None]] = {
    **{name: (1, 1) for name in _UNARY_FUNCTIONS},
    "min": (2, None),
    "max": (2, None),
    "clip": (3, 3),
    "round": (1, 2),
    "where": (3, 3),
}
FUNCTIONS = frozenset(_FUNCTION_ARITY)

# The node types a checked tree may hold (operators and contexts included, as ast.walk yields them).
_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    *_BINARY_FUNCTIONS,
    *_COMPARE_OPS,
)
_CONSTRUCT_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.Starred: "starred arguments",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.JoinedStr: "f-strings",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
    ast.MatMult: "the @ operator",
    ast.BitAnd: "bitwise operators",
    ast.BitOr: "bitwise operators",
    ast.BitXor: "bitwise operators",
    ast.LShift: "bitwise operators",
    ast.RShift: "bitwise operators",
    ast.Invert: "bitwise operators",
    ast.Is: "'is' comparisons",
    ast.IsNot: "'is' comparisons",
    ast.In: "'in' comparisons",
    ast.NotIn: "'in' comparisons",
}


@dataclass(frozen=True)
class ParsedExpression:
    """A checked expression: safe to evaluate, with the variable names it reads."""

    source: str
    label: str  # where it comes from, for messages, e.g. "preprocessor expression 2 (output 'ratio')"
    tree: ast.Expression
    names: frozenset[str]

    def fail(self, why: str) -> ExpressionError:
        return ExpressionError(f"{self.label} {self.source!r}: {why}")


def parse_expression(source: object, label: str) -> ParsedExpression:
    """Parse and check ``source``; raises ExpressionError naming ``label`` and the offending construct."""
    if not isinstance(source, str):
        raise ExpressionError(f"{label}: the expression must be text, not {type(source).__name__}")
    shown = source if len(source) <= 80 else f"{source[:77]}..."
    if not source.strip():
        raise ExpressionError(f"{label}: the expression is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"{label} {shown!r}: longer than {MAX_EXPRESSION_CHARS} characters ({len(source)})")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{label} {shown!r}: not a valid expression ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting too deep for the parser
        raise ExpressionError(f"{label} {shown!r}: cannot be parsed ({type(exc).__name__})") from None
    names = _check_tree(tree, label, shown)
    return ParsedExpression(source, label, tree, frozenset(names))


def _check_tree(tree: ast.Expression, label: str, shown: str) -> set[str]:
    """Whitelist, size and depth checks; iterative, so a deep tree cannot exhaust the Python stack."""
    names: set[str] = set()
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExpressionError(f"{label} {shown!r}: too large (more than {MAX_NODES} syntax nodes)")
        if depth > MAX_DEPTH:
            raise ExpressionError(f"{label} {shown!r}: nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, _ALLOWED_NODES):
            construct = _CONSTRUCT_NAMES.get(type(node), type(node).__name__)
            raise ExpressionError(f"{label} {shown!r}: {construct} not allowed")
        _check_node(node, label, shown, names)
        if isinstance(node, ast.Call):
            children: list[ast.AST] = list(node.args)  # the function name is checked above, not a variable
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend((child, depth + 1) for child in children)
    return names


def _check_node(node: ast.AST, label: str, shown: str, names: set[str]) -> None:
    if isinstance(node, ast.Constant):
        _check_constant(node, label, shown)
        return
    if isinstance(node, ast.Name):
        names.add(node.id)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            construct = _CONSTRUCT_NAMES.get(type(node.func), "calling an expression")
            raise ExpressionError(f"{label} {shown!r}: {construct} not allowed")
        function = node.func.id
        if function not in _FUNCTION_ARITY:
            allowed = ", ".join(sorted(_FUNCTION_ARITY))
            raise ExpressionError(f"{label} {shown!r}: function {function!r} not allowed (allowed: {allowed})")
        if node.keywords:
            raise ExpressionError(f"{label} {shown!r}: keyword arguments not allowed (in {function}())")
        least, most = _FUNCTION_ARITY[function]
        given = len(node.args)
        if given < least or (most is not None and given > most):
            expected = f"{least}" if least == most else (f"{least} or more" if most is None else f"{least}-{most}")
            raise ExpressionError(f"{label} {shown!r}: {function}() takes {expected} arguments, got {given}")
        if function == "round" and given == 2:
            digits = _constant_number(node.args[1])
            if digits is None or digits != int(digits) or abs(digits) > MAX_ROUND_DIGITS:
                raise ExpressionError(
                    f"{label} {shown!r}: round()'s digits must be a constant integer within ±{MAX_ROUND_DIGITS}"
                )
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        exponent = _constant_number(node.right)
        if exponent is not None and abs(exponent) > MAX_EXPONENT:
            raise ExpressionError(f"{label} {shown!r}: exponent {exponent:g} exceeds ±{MAX_EXPONENT:g}")


def _check_constant(node: ast.Constant, label: str, shown: str) -> None:
    if isinstance(node.value, bool | int | float):
        if isinstance(node.value, int) and abs(node.value) > 2**53:
            raise ExpressionError(f"{label} {shown!r}: the number {node.value} is too large")
        return
    kind = "strings" if isinstance(node.value, str | bytes) else f"{type(node.value).__name__} constants"
    raise ExpressionError(f"{label} {shown!r}: {kind} not allowed (only numbers)")


def _constant_number(node: ast.AST) -> float | None:
    """The value of a literal number, possibly with unary signs; None when it is not a literal."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return sign * float(node.value)
    return None


def evaluate(parsed: ParsedExpression, variables: Mapping[str, Value], rows: int) -> FloatArray:
    """Evaluate over ``rows`` rows; every variable is a float or a float64 array of ``rows`` values.

    The result always has ``rows`` values. Raises ExpressionError for an unknown name, an exponent out of
    bounds, or non-finite results (naming how many rows and the first one).
    """
    missing = sorted(parsed.names - set(variables))
    if missing:
        raise parsed.fail(f"unknown name(s) {', '.join(repr(name) for name in missing)}")
    with np.errstate(all="ignore"):  # non-finite results are reported below, per expression
        value = _Evaluator(parsed, variables).visit(parsed.tree.body)
        result = np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,)).copy()
    bad = ~np.isfinite(result)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise parsed.fail(f"gives a non-finite value (inf or nan) in {int(bad.sum())} row(s), first at row {first}")
    return result


class _Evaluator:
    def __init__(self, parsed: ParsedExpression, variables: Mapping[str, Value]) -> None:
        self._parsed = parsed
        self._variables = variables

    def visit(self, node: ast.expr) -> Value:  # noqa: PLR0911 -- one branch per node type is the clearest form
        if isinstance(node, ast.Constant):
            return float(node.value)  # type: ignore[arg-type]  # _check_tree admits numbers only
        if isinstance(node, ast.Name):
            return self._variables[node.id]
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.Not):
                return _as_float(np.equal(operand, 0.0))
            return operand
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BoolOp):
            truths = [np.not_equal(self.visit(item), 0.0) for item in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            combined = truths[0]
            for truth in truths[1:]:
                combined = combine(combined, truth)
            return _as_float(combined)
        if isinstance(node, ast.IfExp):
            condition = np.not_equal(self.visit(node.test), 0.0)
            return _as_float_value(np.where(condition, self.visit(node.body), self.visit(node.orelse)))
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self._parsed.fail(f"{type(node).__name__} not allowed")  # unreachable after _check_tree

    def _binary(self, node: ast.BinOp) -> Value:
        left = self.visit(node.left)
        right = self.visit(node.right)
        if isinstance(node.op, ast.Pow):
            exponents = np.asarray(right, dtype=np.float64)
            finite = exponents[np.isfinite(exponents)]
            if finite.size and float(np.max(np.abs(finite))) > MAX_EXPONENT:
                raise self._parsed.fail(f"an exponent exceeds ±{MAX_EXPONENT:g}")
        operation = _BINARY_FUNCTIONS.get(type(node.op))
        if operation is None:
            raise self._parsed.fail(f"operator {type(node.op).__name__} not allowed")
        return _as_float_value(operation(left, right))

    def _compare(self, node: ast.Compare) -> Value:
        left = self.visit(node.left)
        result: npt.NDArray[np.bool_] | np.bool_ | bool = True
        for operator, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.visit(comparator)
            result = np.logical_and(result, _COMPARE_OPS[type(operator)](left, right))
            left = right
        return _as_float(result)

    def _call(self, node: ast.Call) -> Value:
        assert isinstance(node.func, ast.Name)  # noqa: S101 -- guaranteed by _check_tree
        function = node.func.id
        if function == "round" and len(node.args) == 2:
            digits = _constant_number(node.args[1])
            return _as_float_value(np.round(self.visit(node.args[0]), int(digits or 0)))
        args = [self.visit(arg) for arg in node.args]
        if function in _UNARY_FUNCTIONS:
            return _as_float_value(_UNARY_FUNCTIONS[function](args[0]))
        if function == "round":
            return _as_float_value(np.round(args[0]))
        if function in ("min", "max"):
            reduce = np.minimum if function == "min" else np.maximum
            combined = args[0]
            for arg in args[1:]:
                combined = _as_float_value(reduce(combined, arg))
            return combined
        if function == "clip":
            return _as_float_value(np.clip(args[0], args[1], args[2]))
        if function == "where":
            return _as_float_value(np.where(np.not_equal(args[0], 0.0), args[1], args[2]))
        raise self._parsed.fail(f"function {function!r} not allowed")


def _as_float(value: npt.NDArray[np.bool_] | np.bool_ | bool) -> Value:
    return _as_float_value(np.asarray(value, dtype=np.float64))


def _as_float_value(value: object) -> Value:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return float(array)
    return array
