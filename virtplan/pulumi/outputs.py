"""Pulumi values inside a virtplan stack: `text(output)`, and putting the values back into inputs.

virtplan's model takes plain strings, and a stack is validated before anything is registered,
so a value Pulumi only knows later (a generated SSH key, a secret from `pulumi config set
--secret`) enters a stack as a stand-in string:

    key = SshKey("ops")                      # any Pulumi resource
    password = pulumi.Config().require_secret("rootPassword")
    CloudInit(ssh_keys=[text(key.public_key)], password=text(password),
              user_data=f"#cloud-config\\nwrite_files: [{{path: /etc/motd, content: {text(key.fingerprint)}}}]")

`text()` returns a short placeholder that also works inside f-strings. When the program
registers the resource, `resolve()` replaces every placeholder in its inputs with the Output
(or an Output of the whole string), so Pulumi waits for those values, records the dependency,
keeps secrets secret, and the provider sees the real value; its `check` validates it then.

Use it for free text: `CloudInit` fields and `Graphics(password=)`. Names, sizes and addresses
are planned from the stack itself and must be plain values.
"""

from __future__ import annotations

from typing import Any

import pulumi

from virtplan.model.fields import PLACEHOLDER

_PLACEHOLDER = PLACEHOLDER  # "\x00po<N>\x00"; the model's validation knows it too
_values: list[pulumi.Output[Any]] = []


def text(value: pulumi.Input[str]) -> str:
    """A stand-in string for a Pulumi Output (plain strings are returned as they are)."""
    if isinstance(value, str):
        return value
    _values.append(pulumi.Output.from_input(value))
    return f"\x00po{len(_values) - 1}\x00"


def has_placeholder(value: Any) -> bool:
    """True if `value` (or anything inside it) holds a `text()` stand-in."""
    if isinstance(value, str):
        return _PLACEHOLDER.search(value) is not None
    if isinstance(value, dict):
        return any(has_placeholder(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_placeholder(v) for v in value)
    return False


def resolve(value: Any) -> Any:
    """`value` with every stand-in replaced by its Output; a string mixing text and stand-ins
    becomes one Output of the whole string."""
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if not isinstance(value, str) or not has_placeholder(value):
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return _values[int(whole.group(1))]
    pieces = _PLACEHOLDER.split(value)  # text, index, text, index, ..., text
    outputs = [_values[int(i)] for i in pieces[1::2]]

    def join(resolved: list[Any]) -> str:
        out = []
        for i, piece in enumerate(pieces[0::2]):
            out.append(piece)
            if i < len(resolved):
                out.append(str(resolved[i]))
        return "".join(out)

    return pulumi.Output.all(*outputs).apply(join)
