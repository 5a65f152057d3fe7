"""How much an app folder may hold, and the YAML reader that keeps to it.

A deploy repository is untrusted input and the controller runs with 512 Mi: a 917-byte alias
bomb once took 1.7 GB, a list nested 500 deep ended in RecursionError, and any file of an app
folder was read whole. So every limit lives here, each checked before the work it bounds, and
each refusal is an InputError naming the file and the line or limit.

The reader builds plain Python values straight from the parser's events instead of composing a
node graph first (PyYAML's nodes and marks cost ~650 bytes per value), so memory follows what is
kept, and nesting is counted on an explicit stack, never by recursion. It reads the JSON-shaped
YAML that Kubernetes and canary.yaml need: no aliases or anchors (kubectl-compatible enough, and
the only way a small file becomes a large value), no merge keys, no non-string mapping keys, no
duplicate keys (kubectl refuses them too; with them a reviewer reads one value, git applies
another).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    Event,
    MappingEndEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

from controller.errors import InputError

MiB = 1024 * 1024
MAX_FILE_BYTES = 1 * MiB  # one manifest or canary.yaml (a ConfigMap holds at most 1 MiB too)
MAX_APP_BYTES = 8 * MiB  # the matched manifests of an app together (canary.yaml: its own)
MAX_APP_OBJECTS = 1000  # Kubernetes objects per app, List items counted one by one
MAX_APP_VALUES = 250_000  # YAML values (scalars, lists, mappings) per app: ~20 MB once parsed
MAX_DEPTH = 64  # nested lists and mappings; Kubernetes objects stay well under 20

# libyaml's parser when PyYAML has it: parsing is most of reading a changed app.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_STR = f"{_TAG}str"
_SCALAR_TAGS = frozenset(f"{_TAG}{name}" for name in (
    "null", "bool", "int", "float", "str", "binary", "timestamp"))
_COLLECTION_TAGS = frozenset({None, "!", f"{_TAG}seq", f"{_TAG}map"})
_AS_WRITTEN = frozenset({f"{_TAG}value", f"{_TAG}timestamp"})


def _mib(size: int) -> str:
    return f"{size // MiB} MiB"


@dataclass
class Budget:
    """What an app may still read, spent file by file: the limits are per app, not per file."""

    bytes: int = MAX_APP_BYTES
    values: int = MAX_APP_VALUES
    objects: int = MAX_APP_OBJECTS

    def spend_bytes(self, file: str, size: int) -> None:
        """Before reading a file: its size, known from the git tree listing or the text."""
        if size > MAX_FILE_BYTES:
            raise InputError(file, "", f"{size:,} bytes, over the limit of "
                                       f"{_mib(MAX_FILE_BYTES)} per file")
        if size > self.bytes:
            raise InputError(file, "", f"the app's manifests pass the limit of "
                                       f"{_mib(MAX_APP_BYTES)} per app with this file")
        self.bytes -= size

    def spend_object(self, file: str, where: str) -> None:
        if self.objects <= 0:
            raise InputError(file, where, f"more than {MAX_APP_OBJECTS} objects in the app "
                                          f"(the limit per app)")
        self.objects -= 1


def load_yaml(text: str, file: str, budget: Budget | None = None) -> list[Any]:
    """Every document of a YAML text as plain values (None for an empty document)."""
    budget = Budget() if budget is None else budget
    budget.spend_bytes(file, len(text.encode(errors="replace")))
    loader = YAML_LOADER(text)
    try:
        return _Builder(loader, file, budget).documents()
    except yaml.YAMLError as error:
        raise InputError(file, "", f"invalid YAML: {yaml_problem(error)}") from None
    finally:
        loader.dispose()


def yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


_NO_KEY = object()


@dataclass
class _Open:
    """A list or mapping being filled; for a mapping, the key waiting for its value."""

    value: list[Any] | dict[str, Any]
    key: Any = field(default=_NO_KEY)


class _Builder:
    def __init__(self, loader: Any, file: str, budget: Budget) -> None:
        self.loader, self.file, self.budget = loader, file, budget
        self.stack: list[_Open] = []
        self.root: Any = None

    def fail(self, event: Event, problem: str) -> InputError:
        mark = event.start_mark
        return InputError(self.file, f"line {mark.line + 1}" if mark else "", problem)

    def documents(self) -> list[Any]:
        found: list[Any] = []
        while True:
            event = self.loader.get_event()
            if isinstance(event, StreamEndEvent):
                return found
            if isinstance(event, DocumentEndEvent):
                found.append(self.root)
                self.root = None
            elif isinstance(event, NodeEvent):
                self.node(event)
            elif isinstance(event, SequenceEndEvent | MappingEndEvent):
                self.stack.pop()

    def node(self, event: NodeEvent) -> None:
        if isinstance(event, AliasEvent):
            raise self.fail(event, f"YAML aliases are not allowed (*{event.anchor})")
        if event.anchor is not None:
            raise self.fail(event, f"YAML aliases are not allowed (anchor &{event.anchor})")
        if self.budget.values <= 0:
            raise self.fail(event, f"more than {MAX_APP_VALUES} YAML values in the app (the "
                                   f"limit per app)")
        self.budget.values -= 1
        if isinstance(event, ScalarEvent):
            self.add(event, self.scalar(event))
            return
        assert isinstance(event, CollectionStartEvent)
        if event.tag not in _COLLECTION_TAGS:
            raise self.fail(event, f"the YAML tag {event.tag} is not allowed")
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(event, f"nested deeper than {MAX_DEPTH} levels (the limit)")
        value: list[Any] | dict[str, Any] = [] if isinstance(event, SequenceStartEvent) else {}
        self.add(event, value)
        self.stack.append(_Open(value))

    def scalar(self, event: ScalarEvent) -> Any:
        tag = event.tag
        if tag is not None and tag != "!" and tag not in _SCALAR_TAGS:
            raise self.fail(event, f"the YAML tag {tag} is not allowed")
        if tag is None or tag == "!":
            tag = self.loader.resolve(ScalarNode, event.value, event.implicit)
        if tag == _STR or tag in _AS_WRITTEN:
            # A string, as kubectl reads these: YAML 1.1's `=` (the "value" key) and dates and
            # times (JSON has no dates: kubectl passes the text on).
            return event.value
        if tag == f"{_TAG}merge":
            raise self.fail(event, "YAML merge keys (<<) are not allowed")
        marks: tuple[Any, Any] = (event.start_mark, event.end_mark)  # libyaml's or PyYAML's
        node = ScalarNode(tag, event.value, *marks, style=event.style)
        try:
            if tag not in _SCALAR_TAGS:
                raise ValueError(tag)
            return self.loader.yaml_constructors[tag](self.loader, node)
        except (ValueError, OverflowError):  # 2024-13-45 looks like a timestamp to YAML
            what = tag.removeprefix(_TAG)
            raise self.fail(event, f"cannot read {_short(event.value)} as a YAML {what}; "
                                   f"quote it if it is a string") from None

    def add(self, event: NodeEvent, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
        elif top.key is _NO_KEY:
            if not isinstance(value, str):
                quote = f"; quote {_short(event.value)}" if isinstance(event, ScalarEvent) else ""
                raise self.fail(event, f"mapping keys must be strings{quote}")
            if value in top.value:
                raise self.fail(event, f"the key {_short(value)} is repeated in this mapping")
            top.key = value
        else:
            top.value[top.key] = value
            top.key = _NO_KEY


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:37]}...")
