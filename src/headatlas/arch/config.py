"""The shape of one model, read from its Hugging Face config through its family's keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from headatlas.arch.spec import ArchSpec
from headatlas.errors import ShapeMismatchError


@dataclass(frozen=True)
class ArchConfig:
    """Resolved model shape and the config facts the circuits need."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    vocab_size: int
    eps: float
    activation: str
    tied: bool
    parallel_residual: bool
    softcap: float | None

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for manifests."""
        return asdict(self)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a config (multimodal configs nest it under ``text_config``)."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and "model_type" in inner:
        merged = dict(inner)
        merged.setdefault("tie_word_embeddings", config.get("tie_word_embeddings"))
        return merged
    return config


def _first(config: dict[str, Any], keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise ShapeMismatchError(
        f"config has no {what} (looked for {', '.join(keys) or 'nothing'}): "
        "the checkpoint's config.json is incomplete"
    )


def resolve_config(spec: ArchSpec, config: dict[str, Any]) -> ArchConfig:
    """Read the model shape from a Hugging Face config dict using ``spec``'s key names."""
    config = text_config(config)
    n_layers = int(_first(config, spec.n_layers_keys, "number of layers"))
    n_heads = int(_first(config, spec.n_heads_keys, "number of attention heads"))
    d_model = int(_first(config, spec.d_model_keys, "hidden size"))
    n_kv = n_heads
    for key in spec.n_kv_keys:
        if config.get(key) is not None:
            n_kv = int(config[key])
            break
    d_head = int(config.get("head_dim") or d_model // n_heads)
    if n_heads % n_kv:
        raise ShapeMismatchError(
            f"config has {n_heads} query heads and {n_kv} key/value heads: "
            "the first must be a multiple of the second"
        )
    act = next((config[k] for k in spec.mlp.act_keys if config.get(k)), spec.mlp.default_act)
    act = dict(spec.mlp.act_renames).get(act, act)
    tied = config.get("tie_word_embeddings")
    parallel = spec.parallel_default
    if spec.parallel_residual_key and config.get(spec.parallel_residual_key) is not None:
        parallel = bool(config[spec.parallel_residual_key])
    softcap = config.get(spec.softcap_key) if spec.softcap_key else None
    return ArchConfig(
        model_type=str(config.get("model_type")),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_model=d_model,
        d_head=d_head,
        vocab_size=int(_first(config, ("vocab_size",), "vocabulary size")),
        eps=float(_first(config, spec.eps_keys, "norm epsilon")),
        activation=str(act),
        tied=spec.tied_default if tied is None else bool(tied),
        parallel_residual=parallel,
        softcap=float(softcap) if softcap else None,
    )
