"""How countyfl spells keys in files and messages: kebab-case, derived once from field names."""

from __future__ import annotations


def kebab_case(name: str) -> str:
    """``target_epsilon`` -> ``target-epsilon`` (pydantic's ``alias_generator``)."""
    return name.replace("_", "-")
