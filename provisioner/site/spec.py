"""What a site is, once its input has been validated: the one object every site step reads.

Only `validate.py` builds a SiteSpec from user input, so a step can rely on every field being
safe to put in a path, a config file or a protocol message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SiteType(StrEnum):
    CUSTOMER = "customer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class SiteSpec:
    """A validated site: `domain` is lowercase ASCII (IDN in punycode), `site_id` derived."""

    domain: str
    name: str
    type: SiteType
    template: str
    # Operators to link: None means the pool's active operators; otherwise ids or usernames.
    operators: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def site_id(self) -> str:
        """AEIMS's id: the domain with '.' turned into '_' (hyphens stay, so a-b.com and
        a.b.com never share one)."""
        return self.domain.replace(".", "_")

    @property
    def names(self) -> tuple[str, ...]:
        """Every host name the site answers to (the domain and its www alias)."""
        return (self.domain, f"www.{self.domain}", *self.aliases)

    def as_params(self) -> dict[str, object]:
        """The journal's form: plain JSON values, rebuilt into a SiteSpec by `validate`."""
        return {
            "domain": self.domain,
            "name": self.name,
            "type": str(self.type),
            "template": self.template,
            "operators": list(self.operators) if self.operators is not None else None,
        }
