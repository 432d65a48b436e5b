"""Section: the base of every config section (strict keys, checked assignments) and what of it the
config hash covers (`unhashed`: fields that change speed or logging, never a stage's output)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # fields that change speed or logging but never a stage's output: left out of the config hash
    unhashed: ClassVar[frozenset[str]] = frozenset()

    def hashed_dict(self) -> dict:
        """The fields that define a stage's output (nested sections apply their own `unhashed`)."""
        out = {}
        for k in type(self).model_fields:
            if k in self.unhashed:
                continue
            v = getattr(self, k)
            if isinstance(v, Section):
                out[k] = v.hashed_dict()
            elif isinstance(v, dict) and v and all(isinstance(x, Section) for x in v.values()):
                out[k] = {kk: x.hashed_dict() for kk, x in v.items()}
            elif isinstance(v, list) and v and all(isinstance(x, Section) for x in v):
                out[k] = [x.hashed_dict() for x in v]
            else:
                out[k] = self.model_dump(mode="json", include={k})[k]
        return out
