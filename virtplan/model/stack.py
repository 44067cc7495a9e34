"""The stack: every resource a stack program declared, in declaration order."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from virtplan.model.resources import VM, Host, Network, Pool, Resource, Volume

R = TypeVar("R", bound=Resource)


class Stack:
    """A named collection of declared resources, plus stack-wide options.

    `name` and `project` are the stack's identity on the hosts (see `virtplan.model.identity`).
    """

    def __init__(self, name: str, path: Path | None = None, project: str = ""):
        self.name = name
        self.project = project
        self.declared_name = False
        self.declared_project = False
        self.path = path
        self.resources: list[Resource] = []
        self.template_dir: Path | None = None
        self.source_hash = ""
        #: The stack as written, when this one is its concrete form (see virtplan.model.placement).
        self.declared: Stack | None = None

    @property
    def as_written(self) -> Stack:
        """The stack as its program declared it (itself unless placement made this one)."""
        return self.declared if self.declared is not None else self

    @property
    def key(self) -> str:
        """The identity as one string: "project/name", or "name" without a project."""
        return f"{self.project}/{self.name}" if self.project else self.name

    def add(self, resource: Resource) -> None:
        self.resources.append(resource)

    def of_kind(self, cls: type[R]) -> list[R]:
        return [r for r in self.resources if isinstance(r, cls)]

    @property
    def hosts(self) -> list[Host]:
        return self.of_kind(Host)

    @property
    def networks(self) -> list[Network]:
        return self.of_kind(Network)

    @property
    def pools(self) -> list[Pool]:
        return self.of_kind(Pool)

    @property
    def volumes(self) -> list[Volume]:
        return self.of_kind(Volume)

    @property
    def vms(self) -> list[VM]:
        return self.of_kind(VM)

    def managed(self) -> list[Resource]:
        """Every resource virtplan manages, in declaration order: all but hosts and the
        networks the stack only refers to (`Network(name, existing=True)`)."""
        return [r for r in self.resources if not isinstance(r, Host) and getattr(r, "existing", False) is not True]

    def existing_networks(self) -> list[Network]:
        """The networks the stack refers to by name without managing them."""
        return [n for n in self.networks if n.existing is True]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def by_address(self) -> dict[str, Resource]:
        return {r.address: r for r in self.managed()}
