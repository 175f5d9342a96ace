"""Every switch of the validation experiments, recorded in ``validation/summary.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from headatlas.errors import ValidationInputError
from headatlas.validate.prompts import DEFAULT_TEMPLATES, check_template

EXPERIMENTS = ("correlative", "causal", "multi-token")
ALL_EXPERIMENTS = (*EXPERIMENTS, "qk")
"""Every experiment ``--experiment`` accepts; ``qk`` (the QK circuit, docs/qk.md) runs only
when named."""

# (total heads up to, ablation size m): MAPS ablates more heads in larger models.
_M_BY_SIZE = ((300, 30), (600, 50), (1200, 100), (2500, 150))
_M_LARGEST = 250


def _whole(name: str, value: Any, low: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValidationInputError(
            f"option {name} (--{name.replace('_', '-')}) must be a whole number >= {low}, "
            f"got {value!r}"
        )


@dataclass(frozen=True)
class ValidationOptions:
    """How the inference-time checks run. k and, with ``dynamic_readout="map"``, the readout
    switches (norms, biases) are the map's :class:`~headatlas.scoring.options.MapOptions`."""

    dynamic_readout: str = field(default="map", metadata={"choices": ("map", "paper")})
    """How dynamic scores are read out: ``map`` (the static map's recipe: norms, biases) or
    ``paper`` (MAPS' dynamic score: no final norm, no b_O, no unembedding bias), so the
    validation can run the paper's way whatever the static recipe."""
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES, metadata={"metavar": "TEMPLATE"})
    """Context templates of the correlative experiments, each with one ``<X>`` slot."""
    max_prompts: int | None = None
    """At most this many pairs per relation (a seeded sample); None: every pair."""
    seed: int = 0
    """Seed of the pair sample and of the random heads."""
    batch_size: int = 32
    """Prompts per forward pass."""
    min_multi_token: int = 10
    """Multi-token experiment: relations with fewer multi-token-source pairs are skipped."""
    max_heads: int | None = None
    """Causal: the most heads ablated (m); None: 30/50/100/150/250 by the model's head count.
    m is also capped by the number of heads with a positive static score."""
    steps: tuple[int, ...] | None = field(default=None, metadata={"metavar": "N"})
    """Causal: numbers of ablated heads on the curve; None: 1, 2, 4, 8, ... and m."""
    random_draws: int = 5
    """Causal: random head sets per relation."""
    causal_templates: int | None = None
    """Causal: use only the first N of a relation's few-shot templates; None: all."""
    control_max_overlap: float = 0.15
    """Causal: a control relation shares fewer than this share of the top heads (of the
    smaller of the two head sets)."""
    control_max_acc_gap: float = 0.2
    """Causal: a control relation's base accuracy is within this of the relation's."""
    max_controls: int = 3
    """Causal: at most this many control relations per relation (closest base accuracy)."""

    def __post_init__(self) -> None:
        """Refuse values no experiment can use, naming the option (API and CLI share this)."""
        if isinstance(self.templates, str) or not self.templates:
            raise ValidationInputError(
                f"option templates (--templates) must be one or more templates with a <X> "
                f"slot, got {self.templates!r}"
            )
        for t in self.templates:
            check_template(t)
        if self.dynamic_readout not in ("map", "paper"):
            raise ValidationInputError(
                f"option dynamic_readout (--dynamic-readout) must be map or paper, "
                f"got {self.dynamic_readout!r}"
            )
        for name in ("batch_size", "min_multi_token", "random_draws"):
            _whole(name, getattr(self, name))
        for name in ("max_prompts", "max_heads", "causal_templates"):
            _whole(name, getattr(self, name), allow_none=True)
        _whole("seed", self.seed, low=0)
        _whole("max_controls", self.max_controls, low=0)
        if self.steps is not None:
            if isinstance(self.steps, (str, bytes)) or not self.steps:
                raise ValidationInputError(
                    f"option steps (--steps) must be one or more whole numbers >= 1, "
                    f"got {self.steps!r}"
                )
            for s in self.steps:
                _whole("steps", s)
        for name in ("control_max_overlap", "control_max_acc_gap"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise ValidationInputError(
                    f"option {name} (--{name.replace('_', '-')}) must be a number between 0 "
                    f"and 1, got {value!r}"
                )

    def m_for(self, total_heads: int) -> int:
        """The ablation size cap for a model with ``total_heads`` heads."""
        if self.max_heads is not None:
            return int(self.max_heads)
        for limit, m in _M_BY_SIZE:
            if total_heads <= limit:
                return m
        return _M_LARGEST

    def steps_for(self, m: int) -> list[int]:
        """The curve's x values for ablation size m (always ending at m)."""
        if self.steps is not None:
            chosen = sorted({s for s in self.steps if 0 < s <= m} | {m})
        else:
            chosen, s = [], 1
            while s < m:
                chosen.append(s)
                s *= 2
            chosen.append(m)
        return [0, *chosen]

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the summary."""
        return asdict(self)
