"""Per-institution, per-round record of what every node replied (metrics only, never weights)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RoundRecord:
    """What one round produced: per-partition train and evaluation metrics and failures."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # partition id -> institution id, as each reply named itself
    institutions: dict[int, str] = field(default_factory=dict)


@dataclass
class FederationHistory:
    """Every round's :class:`RoundRecord`, keyed by server round (1-based)."""

    rounds: dict[int, RoundRecord] = field(default_factory=dict)

    def round(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord())

    def to_dict(self) -> dict[str, Any]:
        return {str(r): asdict(record) for r, record in sorted(self.rounds.items())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FederationHistory:
        history = cls()
        for key, record in data.items():
            history.rounds[int(key)] = RoundRecord(
                train={int(k): v for k, v in record["train"].items()},
                evaluate={int(k): v for k, v in record["evaluate"].items()},
                failures=list(record["failures"]),
                institutions={int(k): v for k, v in record.get("institutions", {}).items()},
            )
        return history

    def institution_names(self) -> dict[int, str]:
        """Partition id -> institution id over all rounds (what the replies said)."""
        names: dict[int, str] = {}
        for record in self.rounds.values():
            names.update(record.institutions)
        return names

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> FederationHistory:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
