"""Label and field selectors with the API server's grammar and semantics.

Filtering happens server-side so a watch that selects (for instance the
`!service.kubernetes.io/headless` style selectors kube-proxy uses) sees the
ADDED/DELETED transitions the real server synthesizes when an object starts
or stops matching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import bad_request

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_error(key: str) -> str | None:
    """Why `key` is not a valid qualified label key, or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return "a qualified name must consist of alphanumeric characters, '-', '_' or '.'"
    if key.endswith("/") or not name:
        return "name part must be non-empty"
    if len(name) > 63 or not _NAME_PART.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
                "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
                "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    if key.count("/") == 1 and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"
    return None


def label_value_error(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
                "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
                "'my_value',  or '12345', regex used for validation is "
                "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        val = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and val in self.values
        if self.op in ("!=", "notin"):
            return not has or val not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("gt", "lt"):
            if not has:
                return False
            try:
                lhs, rhs = int(val or ""), int(self.values[0])
            except ValueError:
                return False
            return lhs > rhs if self.op == "gt" else lhs < rhs
        return False


_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|>|<|[^\s,()=!<>]+)")


class LabelSelector:
    """A parsed labelSelector query parameter."""

    def __init__(self, text: str | None) -> None:
        self.text = text or ""
        self.requirements = self._parse(self.text)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @staticmethod
    def _parse(text: str) -> list[Requirement]:
        tokens: list[str] = []
        pos = 0
        stripped = text.strip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if not m:
                raise bad_request(f"unable to parse requirement: {text!r}")
            tokens.append(m.group(1))
            pos = m.end()
            while pos < len(stripped) and stripped[pos].isspace():
                pos += 1
        reqs: list[Requirement] = []
        i = 0

        def fail(why: str) -> Exception:
            return bad_request(f"unable to parse requirement: found '{why}', in selector {text!r}")

        def word(idx: int) -> str:
            if idx >= len(tokens) or tokens[idx] in ("==", "!=", "=", "!", "(", ")", ",", ">", "<"):
                raise fail(tokens[idx] if idx < len(tokens) else "")
            return tokens[idx]

        while i < len(tokens):
            if tokens[i] == "!":
                key = word(i + 1)
                reqs.append(Requirement(key, "!"))
                i += 2
            else:
                key = word(i)
                i += 1
                if i >= len(tokens) or tokens[i] == ",":
                    reqs.append(Requirement(key, "exists"))
                elif tokens[i] in ("=", "==", "!="):
                    op = "!=" if tokens[i] == "!=" else "="
                    if i + 1 < len(tokens) and tokens[i + 1] not in (",",):
                        value = word(i + 1)
                        i += 2
                    else:
                        value = ""
                        i += 1
                    reqs.append(Requirement(key, op, (value,)))
                elif tokens[i] in ("in", "notin"):
                    op = tokens[i]
                    if i + 1 >= len(tokens) or tokens[i + 1] != "(":
                        raise fail(tokens[i + 1] if i + 1 < len(tokens) else "")
                    i += 2
                    values: list[str] = []
                    while True:
                        if i >= len(tokens):
                            raise fail("")
                        if tokens[i] == ")":
                            i += 1
                            break
                        if tokens[i] == ",":
                            if not values or (i + 1 < len(tokens) and tokens[i + 1] in (",", ")")):
                                values.append("")
                            i += 1
                            continue
                        values.append(word(i))
                        i += 1
                    if not values:
                        raise bad_request(
                            "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty")
                    reqs.append(Requirement(key, op, tuple(values)))
                elif tokens[i] in (">", "<"):
                    value = word(i + 1)
                    if not re.fullmatch(r"-?\d+", value):
                        raise bad_request("unable to parse requirement: for 'Gt', 'Lt' operators, "
                                          "the value must be an integer")
                    reqs.append(Requirement(key, "gt" if tokens[i] == ">" else "lt", (value,)))
                    i += 2
                else:
                    raise fail(tokens[i])
            for r in reqs[-1:]:
                err = label_key_error(r.key)
                if err:
                    raise bad_request(f'unable to parse requirement: key: Invalid value: "{r.key}": {err}')
                for v in r.values:
                    if r.op not in ("gt", "lt") and label_value_error(v):
                        raise bad_request(f'unable to parse requirement: values[0]: Invalid value: '
                                          f'"{v}": {label_value_error(v)}')
            if i < len(tokens):
                if tokens[i] != ",":
                    raise fail(tokens[i])
                i += 1
                if i >= len(tokens):
                    raise fail("")
        return reqs


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def get_path(obj: dict[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def field_string(value: Any) -> str:
    """The string a Go fields.Set would hold for a value (bools and ints formatted)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class FieldSelector:
    """A parsed fieldSelector; `supported` lists the field labels this resource allows."""

    def __init__(self, text: str | None, supported: tuple[str, ...],
                 getter: Callable[[dict[str, Any], str], str] | None = None) -> None:
        self.text = text or ""
        self.terms: list[tuple[str, str, str]] = []
        self.getter = getter or (lambda obj, f: field_string(get_path(obj, f)))
        if not self.text.strip():
            return
        for raw in _split_unescaped(self.text, ","):
            term = raw.strip()
            m = re.match(r"^((?:[^=!\\]|\\.)+?)\s*(==|!=|=)\s*(.*)$", term)
            if not m:
                raise bad_request(f"invalid selector: '{self.text}'; can't understand '{term}'")
            field, op, value = m.group(1).strip(), m.group(2), _unescape(m.group(3))
            if field not in supported:
                raise bad_request(f'field label not supported: {field}')
            self.terms.append((field, "!=" if op == "!=" else "=", value))

    @property
    def empty(self) -> bool:
        return not self.terms

    def exact_name(self) -> str | None:
        for field, op, value in self.terms:
            if field == "metadata.name" and op == "=":
                return value
        return None

    def matches(self, obj: dict[str, Any]) -> bool:
        for field, op, value in self.terms:
            actual = self.getter(obj, field)
            if (actual == value) != (op == "="):
                return False
        return True
