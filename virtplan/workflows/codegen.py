"""The one code writer for generated stack programs (`virtplan import`, `virtplan clone`).

A `Writer` turns model objects into the Python that declares them: `Volume("a.qcow2",
pool=images, size="10GiB")`, `VM("web", host=kvm1, ..., disks=[Disk(root, boot=1)])`. The
keywords are the constructor's parameters, in its order, read back from the object's
attributes of the same names; a keyword is left out when it has its default (or a value
the model reads the same, `OMITTED_WHEN`) unless a reader looks for it (`ALWAYS_WRITTEN`).
So a new field of `VM` appears in every generated program without an edit here, and a
generated program declares exactly the objects it was written from
(`tests/unit/test_codegen.py` executes the text to check).

Guarantees: the text is deterministic; references to resources are written as the
variable they were declared under (a reference to one not declared yet is an error); a
`Secret` is never written (an error: programs take secrets from elsewhere, e.g. the
clone's `SOURCE`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import keyword
import os
import re
from collections.abc import Callable
from typing import Any

from virtplan.model import NIC, VM, CloudInit, Disk, Graphics, Host, Resource, Secret, Volume
from virtplan.units import exact_size

#: Keywords whose integer values are byte counts, written as sizes ("256MiB").
SIZE_KEYWORDS = frozenset({"memory", "max_memory", "size"})
#: Values left out beyond the constructor's default: they mean what the default means.
OMITTED_WHEN: dict[tuple[type, str], Callable[[Any], bool]] = {
    (VM, "max_vcpus"): lambda vm: vm.max_vcpus == vm.vcpus,
    (VM, "max_memory"): lambda vm: vm.max_memory_bytes == vm.memory_bytes,
    (VM, "console_log"): lambda vm: not vm.serial,  # logs the serial console: nothing to log without one
    (Volume, "backing_format"): lambda vol: vol.backing_format == "qcow2",
}
#: Keywords written even with their default value: what a reader looks for first.
ALWAYS_WRITTEN = frozenset({(Host, "uri"), (VM, "vcpus"), (VM, "memory")})
#: The parts of a VM, written field by field like a resource.
PARTS = (Disk, NIC, Graphics, CloudInit)
#: Parts that, setting nothing but their first field, are written as that value, which `VM`
#: accepts in their place (a Volume for a Disk, a Network for a NIC, "vnc" for Graphics).
SHORT_FORMS = (Disk, NIC, Graphics)
#: Plain values written as literals; anything else is refused rather than written wrong.
LITERALS = (str, int, float, bool, type(None))
#: Calls longer than this are written one argument per line; VMs always are.
WIDTH = 100


class Code(str):
    """Python source written as is: a variable name, an expression."""


def literal(value: Any) -> str:
    """A Python literal for `value`, strings double-quoted as the project writes them."""
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def identifier(text: str, taken: set[str], suffix: str = "") -> str:
    """A fresh Python variable name derived from `text` (+ `suffix`), added to `taken`."""
    base = (re.sub(r"\W+", "_", text).strip("_").lower() or "x") + suffix
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "_" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def docstring(lines: list[str]) -> str:
    """A module docstring of `lines` (a triple quote inside cannot end it early)."""
    return '"""' + "\n".join(lines).replace('"""', "'''") + '\n"""'


def wrap_comment(text: str, width: int = 100) -> list[str]:
    """`text` as `# ` comment lines no wider than `width`."""
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2, break_on_hyphens=False)]


def import_line(names: list[str]) -> str:
    """`from virtplan import ...` for `names`, in the order ruff's isort keeps (NIC, VM, Disk, ...)."""
    return f"from virtplan import {', '.join(sorted(set(names), key=lambda s: (not s.isupper(), s)))}"


def arguments(obj: Resource) -> dict[str, Any]:
    """The constructor arguments that rebuild `obj`: each parameter's attribute, in order."""
    return {name: getattr(obj, name) for name in inspect.signature(type(obj)).parameters}


#: One argument's source: "value" or "key=value", or (key, items) for a list it may wrap.
Arg = str | tuple[str, list[str]]


def call(func: str, args: list[Arg], assign: str | None = None, spread: bool = False) -> str:
    """`[assign = ]func(args)` on one line, or one argument per line when `spread` or too
    long; a list argument too long for its line gets one item per line."""

    def inline(arg: Arg) -> str:
        return arg if isinstance(arg, str) else f"{arg[0]}=[{', '.join(arg[1])}]"

    head = f"{assign} = {func}" if assign else func
    line = f"{head}({', '.join(inline(a) for a in args)})"
    if not spread and len(line) <= WIDTH:
        return line
    out = []
    for arg in args:
        text = f"    {inline(arg)},\n"
        if not isinstance(arg, str) and len(text) > WIDTH + 1:
            text = f"    {arg[0]}=[\n" + "".join(f"        {item},\n" for item in arg[1]) + "    ],\n"
        out.append(text)
    return f"{head}(\n" + "".join(out) + ")"


def _default(cls: type, key: str) -> Any:
    """The default of constructor parameter `key` (a dataclass's default factory called)."""
    if dataclasses.is_dataclass(cls):
        found = next(f for f in dataclasses.fields(cls) if f.name == key)
        if found.default_factory is not dataclasses.MISSING:
            return found.default_factory()
    return inspect.signature(cls).parameters[key].default


class Writer:
    """Writes the declarations of one program, remembering each declared object's variable
    and each class it wrote (for the program's import line)."""

    def __init__(self) -> None:
        self.names: dict[Resource, str] = {}  # resources compare by identity
        self.used: set[str] = set()

    def name(self, resource: Resource, var: str) -> None:
        """Refer to `resource` as `var` from now on (it is declared elsewhere)."""
        self.names[resource] = var

    def declare(self, resource: Resource, var: str | None = None, **override: Any) -> str:
        """The statement declaring `resource` (as `var = ...` when given a variable);
        `override` replaces keyword values, e.g. with `Code` the object cannot express."""
        args: list[Arg] = [self.value(resource.name)]
        for key, value in arguments(resource).items():
            if key == "name":
                continue
            if key in override:
                value = override[key]
            elif self.omitted(resource, key, value):
                continue
            if isinstance(value, list):
                args.append((key, [self.value(v, key) for v in value]))
            else:
                args.append(f"{key}={self.value(value, key)}")
        func = type(resource).__name__
        self.used.add(func)
        if var is not None:
            self.name(resource, var)
        return call(func, args, var, spread=isinstance(resource, VM))

    @staticmethod
    def omitted(obj: object, key: str, value: Any) -> bool:
        """Whether keyword `key` of `obj` says nothing its constructor's default does not."""
        if (type(obj), key) in ALWAYS_WRITTEN:
            return False
        default = _default(type(obj), key)
        if value == default or (default is None and value in ([], ())):
            return True
        rule = OMITTED_WHEN.get((type(obj), key))
        return rule is not None and rule(obj)

    def value(self, value: Any, key: str = "") -> str:
        """The source of one value: a variable, a part, a list, a size or a literal."""
        if isinstance(value, Secret):
            raise ValueError(f"{key or 'a value'} is a secret; a generated program never holds one")
        if isinstance(value, Resource):
            if value not in self.names:
                raise KeyError(f"{value!r} is used before it is declared")
            return self.names[value]
        if isinstance(value, PARTS):
            return self.part(value)
        if isinstance(value, list):
            return "[" + ", ".join(self.value(v, key) for v in value) + "]"
        if isinstance(value, tuple):
            return literal(tuple(Code(self.value(v, key)) for v in value))
        if key in SIZE_KEYWORDS and isinstance(value, int) and not isinstance(value, bool):
            return literal(exact_size(value))
        if isinstance(value, os.PathLike):
            return literal(os.fspath(value))
        if not isinstance(value, LITERALS):
            raise TypeError(f"{key or 'a value'}: cannot write a {type(value).__name__} into a program")
        return literal(value)

    def part(self, part: Disk | NIC | Graphics | CloudInit) -> str:
        """`Disk(root, boot=1)`, or `root` alone where the short form says the same."""
        first, *rest = dataclasses.fields(part)
        head = getattr(part, first.name)
        kwargs = [
            f"{f.name}={self.value(getattr(part, f.name), f.name)}"
            for f in rest
            if not self.omitted(part, f.name, getattr(part, f.name))
        ]
        if not kwargs and isinstance(part, SHORT_FORMS):
            return self.value(head, first.name)
        self.used.add(type(part).__name__)
        args = kwargs if head is None else [self.value(head, first.name), *kwargs]
        return f"{type(part).__name__}({', '.join(args)})"
