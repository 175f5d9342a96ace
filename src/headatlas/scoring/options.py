"""Every method switch of the map, explicit and recorded in the manifest.

:class:`MapOptions` holds how heads are read as one :class:`~headatlas.scoring.recipe.Recipe`
(declared there, once) and the rest of the map's switches (k, pairs, null, labels, device)
as its own fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any

from headatlas.errors import OptionError
from headatlas.runtime import DTYPES, resolve_dtype
from headatlas.runtime import compute_dtype as compute_dtype  # re-exported: moved to runtime
from headatlas.scoring.categories import DEFAULT_THRESHOLD, LABEL_RULES
from headatlas.scoring.recipe import DEFAULT_CONTEXTS, PRESETS, Recipe

LARGE_VOCAB = 100_000

_DTYPES = DTYPES  # the names the dtype option accepts

PRESET_OPTIONS: dict[str, dict[str, Any]] = {"maps": {"label_rule": "paper"}}
"""The MapOptions fields a preset sets besides its recipe (:data:`PRESETS`): ``maps`` labels
heads by the paper's rule."""

LEGACY_SWITCHES = (
    "effective_embedding",
    "effective_embedding_layer0",
    "embedding",
    "contexts",
    "pre_norm",
    "final_norm",
    "value_bias",
    "output_gain",
    "output_bias",
    "unembed_bias",
)
"""The recipe switches MapOptions took as fields before it held a :class:`Recipe`; still
accepted as keywords (``MapOptions(pre_norm=False)``) and read from old manifests."""


def recipe_with(base: Recipe, switches: Mapping[str, Any]) -> Recipe:
    """``base`` with the switches named the old way (:data:`LEGACY_SWITCHES`) changed: the
    recipe old manifests and ``MapOptions(embedding=..., pre_norm=...)`` describe.
    ``effective_embedding=False`` is ``embedding="none"``; ``effective_embedding_layer0`` is
    ``embedding_layer0``; unknown names are ignored."""
    changes = {
        name: value
        for name, value in switches.items()
        if name in LEGACY_SWITCHES and not name.startswith("effective_")
    }
    if "effective_embedding_layer0" in switches:
        changes["embedding_layer0"] = switches["effective_embedding_layer0"]
    effective = switches.get("effective_embedding", True)
    if not isinstance(effective, bool):
        raise OptionError(f"option effective_embedding must be True or False, got {effective!r}")
    if not effective:
        changes["embedding"] = "none"
    if isinstance(changes.get("contexts"), list):
        changes["contexts"] = tuple(changes["contexts"])
    if not changes:
        return base
    return dataclasses.replace(base, **changes)


def _whole(name: str, value: Any, allow_none: bool = False, switch: str | None = None) -> None:
    """Refuse anything but a whole number >= 1 (None too when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        spelled = switch or "--" + name.replace("_", "-")
        raise OptionError(f"option {name} ({spelled}) must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class MapOptions:
    """How relation scores are computed: the recipe (how a head is read) and every other
    switch of the map. Defaults follow the MAPS paper, with this project's recipe."""

    k: int | None = None
    """Top-k for every relation; None: 1 for copying relations, else 10 (3 and 25 when the
    vocabulary exceeds 100k tokens)."""
    k_per_relation: Mapping[str, int] = field(
        default_factory=dict, metadata={"cli": "--k-relation", "metavar": "NAME=K"}
    )
    """Per-relation top-k overrides, NAME=K (win over ``k``)."""
    start_token: str = field(default="auto", metadata={"metavar": "auto|none|ID"})
    """The prefix of the ``forward`` embedding: auto = the tokenizer's start token ([BOS, s];
    [s] when it has none), none = [s], or a token id ([ID, s]). Recorded in the manifest."""
    recipe: Recipe = field(default=Recipe(), metadata={"cli_skip": True})
    """How a head's input is formed and its output read out: the source embedding, norms and
    biases (:class:`~headatlas.scoring.recipe.Recipe`; :data:`~headatlas.scoring.recipe.PRESETS`
    names the MAPS paper's). The command line's recipe switches (``--embedding``,
    ``--no-pre-norm``...) are its fields."""
    leading_space: bool = True
    """Prefix relation words with a space before tokenising."""
    first_token: bool = False
    """Use the first token of multi-token targets instead of dropping the pair."""
    min_pairs: int = 30
    """Relations with fewer single-token pairs are skipped with a printed reason."""
    threshold: float = DEFAULT_THRESHOLD
    """A head implements a relation when its score is at least this."""
    use_suppression: bool = False
    """Let suppression scores count towards categories too."""
    null_permutations: int = 3
    """Seeded target permutations per relation scored as its null (0: none, then the label
    rule must be ``paper``); see :mod:`headatlas.scoring.null`."""
    null_seed: int = 0
    """Seed of the null's permutations."""
    label_rule: str = field(default="null", metadata={"choices": LABEL_RULES})
    """When a score counts towards a label: null = at least the threshold and above every
    shuffled-target score (null_max; with n permutations this is the p <= 1/(n+1) test),
    p-value = at least the threshold and empirical p <= null_alpha (needs >= 1/alpha - 1
    permutations), paper = at least the threshold (the MAPS rule; ``--preset maps``)."""
    null_alpha: float = 0.05
    """The p-value bound of label_rule p-value."""
    evidence_right: int = 20
    """Evidence kept per (head, relation) scoring at least the threshold: at most this many
    pairs the head gets right (with evidence_wrong, both 0: evidence.parquet stays empty)."""
    evidence_wrong: int = 10
    """Evidence kept per (head, relation) scoring at least the threshold: at most this many
    pairs the head gets wrong."""
    dtype: str = field(default="float32", metadata={"choices": tuple(_DTYPES)})
    """Storage dtype of weights and inputs: float32, float64 or bfloat16. Ranks are computed in
    float32 (float64 when asked for) whatever this is; see :func:`compute_dtype`."""
    device: str = "auto"
    """'auto' (a CUDA GPU when present, else CPU), 'cpu', 'cuda', 'cuda:1'..."""
    qk: bool = False
    """Also read every head's QK circuit (where it attends) and write qk_scores.parquet beside
    the scores (see docs/qk.md)."""
    qk_rotary: str = field(default="offsets", metadata={"choices": ("none", "offsets", "slow")})
    """How the static QK reading handles rotary positions: none, offsets (the logit averaged
    over distances 1..128) or slow (only the frequency pairs that turn under a quarter turn
    over 128 positions); ``validate --experiment qk`` measures which predicts inference best."""
    qk_context: bool = False
    """Read the QK sample's inputs in context (each token after 16 random tokens: a forward
    pass) instead of through the recipe; on SmolLM2 r = 0.94 against inference instead of 0.81."""

    # Compatibility: the recipe's switches as keywords, as before MapOptions held a Recipe
    # (``MapOptions(pre_norm=False)`` is ``MapOptions(recipe=Recipe(pre_norm=False))``). They
    # change ``recipe`` and are not kept: read them from ``options.recipe``.
    effective_embedding: InitVar[bool | None] = None
    effective_embedding_layer0: InitVar[bool | None] = None
    embedding: InitVar[str | None] = None
    contexts: InitVar[Sequence[str] | None] = None
    pre_norm: InitVar[bool | None] = None
    final_norm: InitVar[bool | None] = None
    value_bias: InitVar[bool | None] = None
    output_gain: InitVar[bool | None] = None
    output_bias: InitVar[bool | None] = None
    unembed_bias: InitVar[bool | None] = None

    def __post_init__(self, *switches: Any) -> None:
        """Refuse values no map can use, naming the option (the API and CLI share this); fold
        switches given as keywords into the recipe."""
        if not isinstance(self.recipe, Recipe):
            raise OptionError(f"option recipe must be a Recipe, got {self.recipe!r}")
        given = {n: v for n, v in zip(LEGACY_SWITCHES, switches, strict=True) if v is not None}
        object.__setattr__(self, "recipe", recipe_with(self.recipe, given))
        _whole("k", self.k, allow_none=True)
        if not isinstance(self.k_per_relation, Mapping):
            raise OptionError(
                f"option k_per_relation (--k-relation) must map relation names to k, "
                f"got {self.k_per_relation!r}"
            )
        for name, k in self.k_per_relation.items():
            if not isinstance(name, str) or not name:
                raise OptionError(f"option k_per_relation (--k-relation) has a bad name {name!r}")
            _whole(f"k_per_relation[{name}]", k, switch=f"--k-relation {name}=K")
        _whole("min_pairs", self.min_pairs)
        if not isinstance(self.start_token, str) or not (
            self.start_token in ("auto", "none") or self.start_token.isdigit()
        ):
            raise OptionError(
                f"option start_token (--start-token) must be auto, none or a token id, "
                f"got {self.start_token!r}"
            )
        for name in ("null_permutations", "null_seed", "evidence_right", "evidence_wrong"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                spelled = "--" + name.replace("_", "-")
                raise OptionError(
                    f"option {name} ({spelled}) must be a whole number >= 0, got {value!r}"
                )
        if self.label_rule not in LABEL_RULES:
            raise OptionError(
                f"option label_rule (--label-rule) must be one of {', '.join(LABEL_RULES)}, "
                f"got {self.label_rule!r}"
            )
        if (
            isinstance(self.null_alpha, bool)
            or not isinstance(self.null_alpha, (int, float))
            or not 0 < self.null_alpha <= 1
        ):
            raise OptionError(
                f"option null_alpha (--null-alpha) must be a number in (0, 1], "
                f"got {self.null_alpha!r}"
            )
        if self.label_rule != "paper" and self.null_permutations == 0:
            raise OptionError(
                f"label rule {self.label_rule} needs the null: set --null-permutations >= 1, "
                "or --label-rule paper"
            )
        if self.label_rule == "p-value" and 1 / (1 + self.null_permutations) > self.null_alpha:
            need = math.ceil(1 / self.null_alpha - 1)
            raise OptionError(
                f"with {self.null_permutations} permutations no p-value is <= "
                f"{self.null_alpha}: set --null-permutations >= {need}, or --label-rule null"
            )
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not 0 <= self.threshold <= 1
        ):
            raise OptionError(
                f"option threshold (--threshold) must be a number between 0 and 1, "
                f"got {self.threshold!r}"
            )
        for name in ("leading_space", "first_token", "use_suppression", "qk", "qk_context"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(
                    f"option {name} must be True or False, got {getattr(self, name)!r}"
                )
        if self.qk_rotary not in ("none", "offsets", "slow"):
            raise OptionError(
                f"option qk_rotary (--qk-rotary) must be one of none, offsets, slow, "
                f"got {self.qk_rotary!r}"
            )
        resolve_dtype(self.dtype)
        if not isinstance(self.device, str):  # the device itself is checked where it is used
            raise OptionError(f"option device (--device) must be a string, got {self.device!r}")

    def check_for(self, relations: Sequence[str], vocab_size: int) -> None:
        """Check the options against what a map will use: k_per_relation names must be among
        ``relations`` and every k at most the vocabulary size."""
        unknown = sorted(set(self.k_per_relation) - set(relations))
        if unknown:
            raise OptionError(
                f"--k-relation names relation(s) not in this map: {', '.join(unknown)}; "
                f"choose among {', '.join(relations)}"
            )
        for name, k in [("k", self.k), *self.k_per_relation.items()]:
            if k is not None and k > vocab_size:
                raise OptionError(
                    f"option {name}={k} exceeds the vocabulary size {vocab_size}: choose "
                    f"a k of at most {vocab_size}"
                )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MapOptions:
        """Options of a named recipe: ``maps`` (the MAPS authors' exact switches: MLP0, no norm,
        no bias, k by vocabulary, the paper's label rule) or ``default``; ``overrides`` (other
        fields, or recipe switches as keywords) win over the preset."""
        if name not in PRESETS:
            raise OptionError(f"preset '{name}' is unknown: use one of {', '.join(PRESETS)}")
        return cls(**{**PRESET_OPTIONS.get(name, {}), "recipe": PRESETS[name], **overrides})

    def forward_start(self) -> int | str | None:
        """``start_token`` as :func:`~headatlas.scoring.recipe.forward_inputs` takes it."""
        if self.start_token == "none":
            return None
        return "auto" if self.start_token == "auto" else int(self.start_token)

    def k_for(self, relation: str, copying: bool, vocab_size: int) -> int:
        """The k used for one relation."""
        if relation in self.k_per_relation:
            return int(self.k_per_relation[relation])
        if self.k is not None:
            return int(self.k)
        large = vocab_size > LARGE_VOCAB
        if copying:
            return 3 if large else 1
        return 25 if large else 10

    def as_dict(self, recipe: bool = True) -> dict[str, Any]:
        """Plain dict of the options, the recipe's switches under ``recipe`` (left out with
        ``recipe=False``: the map's manifest records the recipe in a section of its own)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["k_per_relation"] = dict(self.k_per_relation)
        if recipe:
            d["recipe"] = self.recipe.as_dict()
        else:
            d.pop("recipe")
        return d

    def legacy_dict(self) -> dict[str, Any]:
        """The options in the layout MapOptions had before it held a Recipe (the recipe's
        switches among the other fields, the context mode's default contexts as none given),
        for hashes that must not change: the cache key of maps made then, and a sweep's
        request key. A recipe reading the token embedding is written as ``--embedding none``
        wrote it (``effective_embedding`` on, ``embedding="none"``), whichever way it was
        asked for."""
        d = self.as_dict(recipe=False)
        r = self.recipe
        d.update(
            effective_embedding=True,
            embedding=r.embedding,
            effective_embedding_layer0=r.embedding_layer0,
            contexts=() if r.contexts == DEFAULT_CONTEXTS else r.contexts,
            pre_norm=r.pre_norm,
            final_norm=r.final_norm,
            value_bias=r.value_bias,
            output_gain=r.output_gain,
            output_bias=r.output_bias,
            unembed_bias=r.unembed_bias,
        )
        return d

    def scoring_key(self) -> str:
        """Hash of the switches that change scores (not device, dtype-insensitive parts kept),
        in the layout of :meth:`legacy_dict`: maps made before MapOptions held a Recipe are
        reused, and one recipe has one key."""
        d = self.legacy_dict()
        relabel = ("threshold", "use_suppression", "label_rule", "null_alpha")
        for name in ("device", *relabel, "evidence_right", "evidence_wrong"):
            d.pop(name)
        for name in ("qk", "qk_rotary", "qk_context"):
            d.pop(name)  # the QK switches change qk_scores.parquet only, not the OV scores
        if d["start_token"] == "auto":  # keys of maps made before the field stay valid
            d.pop("start_token")
        if not d["contexts"]:  # keys of maps from before the context mode stay as they were
            d.pop("contexts")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
