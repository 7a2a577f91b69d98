"""Expressions of the mapping language, compiled once: JMESPath, templates, tags.

``compile_field`` turns one field spec into ``f(item, context) -> str | None``.
It raises ``ValueError`` with a readable reason for anything that will not
compile, so that the schema can report it with the file and key.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jmespath
from jmespath.exceptions import IncompleteExpressionError, JMESPathError, JMESPathTypeError, LexerError, ParseError

from .functions import TRANSFORMS, make_transform, snow_string

Evaluator = Callable[[dict[str, Any], dict[str, str]], Any]

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
CONTEXT_NAMES = ("account_id", "region", "partition", "source")


def compile_path(path: str) -> Callable[[Any], Any]:
    """A JMESPath, compiled once. The shapes mappings use most (dotted paths,
    ``a || b``, a tag lookup ``Tags[?Key=='Name'].Value | [0]``, ``a[0]``) run as
    plain Python with the same result; anything else runs in jmespath."""
    if _DOTTED.match(path):
        return _dotted(path.split("."))
    try:
        compiled = jmespath.compile(path)
    except JMESPathError as exc:
        raise ValueError(f"JMESPath does not compile: {_jmespath_reason(exc, path)}") from None
    return _fast(compiled.parsed) or compiled.search


def _jmespath_reason(exc: JMESPathError, path: str) -> str:
    """jmespath's reason on one line, with the expression and where in it: its own message spreads
    the expression and a caret over two more lines, which a list of problems would cut off."""
    if not path.strip():
        return "the expression is empty"
    if isinstance(exc, LexerError):
        reason = exc.message
    elif isinstance(exc, IncompleteExpressionError):
        return f"incomplete expression: {path!r} ends too soon"
    elif isinstance(exc, ParseError):
        reason = exc.msg
    else:
        reason = str(exc).splitlines()[0]
    position = getattr(exc, "lex_position", None)
    return f"{reason}" + (f" at character {position + 1}" if isinstance(position, int) else "") + f" of {path!r}"


def _dotted(keys: list[str]) -> Callable[[Any], Any]:
    def get(item: Any) -> Any:
        for key in keys:
            if not isinstance(item, dict):
                return None
            item = item.get(key)
        return item

    return get


def _truthy(value: Any) -> bool:
    """JMESPath's truth: false, null and empty strings, lists and objects are false."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def _fast(node: dict[str, Any]) -> Callable[[Any], Any] | None:
    """A Python function for a few common AST shapes, or None (use jmespath)."""
    kind, children = node["type"], node.get("children", [])
    if kind == "field":
        return _dotted([node["value"]])
    if kind == "literal":
        value = node["value"]
        return lambda _item: value
    if kind == "identity":
        return lambda item: item
    if kind == "subexpression":
        left, right = (_fast(c) for c in children)
        if left and right:
            return lambda item: (lambda inner: None if inner is None else right(inner))(left(item))
    if kind == "or_expression":
        left, right = (_fast(c) for c in children)
        if left and right:
            return lambda item: (lambda first: first if _truthy(first) else right(item))(left(item))
    if kind == "and_expression":
        left, right = (_fast(c) for c in children)
        if left and right:
            return lambda item: (lambda first: right(item) if _truthy(first) else first)(left(item))
    if kind == "multi_select_list":
        members = [_fast(c) for c in children]
        if all(members):
            return lambda item: None if item is None else [member(item) for member in members]
    if kind == "index_expression" and children[1]["type"] == "index":
        base, index = _fast(children[0]), children[1]["value"]
        if base:
            def at(item: Any) -> Any:
                found = base(item)
                if not isinstance(found, list):
                    return None
                try:
                    return found[index]
                except IndexError:
                    return None

            return at
    if kind == "comparator" and node["value"] in ("eq", "ne"):
        return _fast_comparison(node)
    if kind == "function_expression" and node["value"] == "length" and len(children) == 1:
        argument = _fast(children[0])
        if argument:
            def length(item: Any) -> Any:
                found = argument(item)
                if isinstance(found, (str, list, dict)):
                    return len(found)
                raise JMESPathTypeError("length", found, _jmespath_type(found), ["string", "array", "object"])

            return length
    if kind == "function_expression" and node["value"] == "sum" and len(children) == 1:
        argument = _fast(children[0])
        if argument:
            def total(item: Any) -> Any:
                found = argument(item)
                if not isinstance(found, list):
                    kind = {dict: "object", str: "string"}.get(type(found)) or _jmespath_type(found)
                    raise JMESPathTypeError("sum", found, kind, ["array-number"])
                for number in found:  # as jmespath tells it: the first member that is not a number
                    if type(number) not in (int, float):
                        raise JMESPathTypeError("sum", number, type(number).__name__, ["array-number"])
                return sum(found)

            return total
    if kind == "pipe":
        return _fast_tag(node)
    return None


def _jmespath_type(value: Any) -> str:
    """JMESPath's name for the type of ``value``, as its errors say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _fast_comparison(node: dict[str, Any]) -> Callable[[Any], Any] | None:
    """``a == 'text'``, ``a != `null```: against a literal string or null, where Python's == is
    JMESPath's (a number or a boolean literal is not: Python has 1 == true)."""
    left, right = node["children"]
    if right["type"] != "literal" and left["type"] == "literal":
        left, right = right, left
    if right["type"] != "literal" or not (right["value"] is None or isinstance(right["value"], str)):
        return None
    value, getter = right["value"], _fast(left)
    if getter is None:
        return None
    if node["value"] == "eq":
        return (lambda item: getter(item) is None) if value is None else (lambda item: getter(item) == value)
    return (lambda item: getter(item) is not None) if value is None else (lambda item: getter(item) != value)


def _fast_tag(node: dict[str, Any]) -> Callable[[Any], Any] | None:
    """``List[?Key=='x'].Value | [0]``: the first match's value."""
    projection, index = node["children"]
    if projection["type"] != "filter_projection" or index["type"] != "index_expression":
        return None
    if index["children"][0]["type"] != "identity" or index["children"][1] != {"type": "index", "value": 0, "children": []}:
        return None
    source, value, comparator = projection["children"]
    if source["type"] != "field" or value["type"] != "field" or comparator.get("value") != "eq":
        return None
    key, literal = comparator["children"]
    if key["type"] != "field" or literal["type"] != "literal":
        return None
    list_name, value_name, key_name, wanted = source["value"], value["value"], key["value"], literal["value"]

    def first_match(item: Any) -> Any:
        entries = item.get(list_name) if isinstance(item, dict) else None
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if isinstance(entry, dict) and entry.get(key_name) == wanted:
                found = entry.get(value_name)
                if found is not None:  # a projection drops nulls
                    return found
        return None

    return first_match


def _template_parts(text: str) -> list[tuple[str, str]]:
    """A template cut into its literal text and its placeholders: ``("text", s)`` and ``("expr", s)``
    in turn. ``{{`` and ``}}`` are a literal brace; any other brace not part of a ``{...}`` placeholder
    is refused, with where it is: ``{$regoin:{$account_id}`` would otherwise be text in every CI's
    identity."""
    parts: list[tuple[str, str]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{}" and text[i + 1 : i + 2] == char:
            literal.append(char)
            i += 2
            continue
        if char == "}":
            raise ValueError(f"'}}' without its '{{' at character {i + 1} of {text!r} (write '}}}}' for a literal one)")
        if char != "{":
            literal.append(char)
            i += 1
            continue
        match = _PLACEHOLDER.match(text, i)
        if match is None:
            raise ValueError(f"'{{' at character {i + 1} of {text!r} is not closed by '}}' before another brace "
                             "(write '{{' for a literal one)")
        if not match.group(1).strip():
            raise ValueError(f"empty placeholder at character {i + 1} of {text!r}")
        parts.append(("text", "".join(literal)))
        parts.append(("expr", match.group(1).strip()))
        literal = []
        i = match.end()
    parts.append(("text", "".join(literal)))
    return parts


def _template(text: str) -> Evaluator:
    pieces: list[str | Callable[[Any, dict[str, str]], Any]] = []
    for kind, expr in _template_parts(text):
        if kind == "text":
            if expr:
                pieces.append(expr)
        elif expr.startswith("$"):
            name = expr[1:]
            if name not in CONTEXT_NAMES:
                raise ValueError(f"unknown variable ${name}; known: " + ", ".join("$" + n for n in CONTEXT_NAMES))
            pieces.append(lambda _item, ctx, name=name: ctx.get(name))
        else:
            getter = compile_path(expr)
            pieces.append(lambda item, _ctx, getter=getter: getter(item))

    def render(item: dict[str, Any], ctx: dict[str, str]) -> str | None:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = piece(item, ctx)
            if type(value) is not str:
                value = snow_string(value)
            if value is None or value == "":
                return None
            out.append(value)
        return "".join(out)

    return render


def _tag_getter(key: str) -> Callable[[Any], Any]:
    def get(item: Any) -> Any:
        tags = item.get("Tags") or item.get("TagSet") or item.get("TagList") or item.get("tags")
        if isinstance(tags, dict):
            return tags.get(key)
        for tag in tags or ():
            if isinstance(tag, dict) and tag.get("Key") == key:
                return tag.get("Value")
        return None

    return get


def compile_field(spec: Any) -> Evaluator:
    """A field spec -> ``f(item, context) -> str | None``."""
    if spec.template is not None:
        base: Evaluator = _template(spec.template)
    elif spec.path is not None:
        getter = compile_path(spec.path)
        base = lambda item, _ctx: getter(item)  # noqa: E731
    elif spec.tag is not None:
        getter = _tag_getter(spec.tag)
        base = lambda item, _ctx: getter(item)  # noqa: E731
    else:
        constant = spec.value
        base = lambda _item, _ctx: constant  # noqa: E731
    unknown = [t for t in spec.transform if t.partition(":")[0] not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform {unknown[0]!r}; known: {', '.join(sorted(TRANSFORMS))}")
    transforms = [make_transform(t) for t in spec.transform]
    value_map = spec.map
    default = snow_string(spec.default)

    def evaluate(item: dict[str, Any], ctx: dict[str, str]) -> str | None:
        value = base(item, ctx)
        for fn in transforms:
            value = fn(value)
        value = snow_string(value)
        if value_map is not None and value is not None:
            value = value_map.get(value, value_map.get("*", value))
        if value is None or value == "":
            return default if default is not None else value
        return value

    return evaluate
