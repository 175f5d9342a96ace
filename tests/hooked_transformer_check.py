"""Run in a subprocess whose path puts TransformerLens 3.x first (tests/test_transformer_lens.py):
tiny Hugging Face models converted to HookedTransformers by TransformerLens's own converters,
then read by headatlas. Prints one JSON object with what the test asserts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.errors import WeightSourceError
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions


def gpt2_hooked() -> tuple[object, object]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    hf = tiny_model("gpt2")
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
        act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer())
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return model, hf


def llama_hooked() -> tuple[object, object]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    hf = tiny_model("llama-gqa")
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size,
        d_vocab=c.vocab_size, n_ctx=64, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", gated_mlp=True, eps=c.rms_norm_eps,
        rotary_dim=c.hidden_size // c.num_attention_heads,
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer())
    model.load_state_dict(convert_llama_weights(hf, cfg), strict=False)
    return model, hf


def main(tmp: Path) -> dict[str, object]:
    import transformer_lens

    found: dict[str, object] = {"tl_file": transformer_lens.__file__}
    quiet = {"options": MapOptions(k=5000), "progress": False, "log": lambda _: None}
    rels = ["copying", "country_capital", "country_language"]
    model, hf = gpt2_hooked()
    folder = save_tiny(hf, tmp / "gpt2")
    gpt2_tokenizer().save_pretrained(folder)
    a, b = map_heads(model, rels, **quiet), map_heads(folder, rels, **quiet)
    cols = ["layer", "head", "relation", "score", "suppression_score"]
    found["gpt2_scores_equal"] = a.scores[cols].equals(b.scores[cols])
    found["gpt2_nonzero"] = float(b.scores["score"].gt(0).mean())
    found["gpt2_max_diff"] = float((a.scores["score"] - b.scores["score"]).abs().max())
    found["source"] = a.manifest["model"]["source"]

    model, hf = llama_hooked()
    mine, ref = ModelCircuits.load(model), ModelCircuits.load(hf)
    diffs = []
    for layer in range(ref.cfg.n_layers):
        x, y = mine.layer(layer), ref.layer(layer)
        diffs += [(x.W_V - y.W_V).abs().max(), (x.W_O - y.W_O).abs().max()]
    diffs += [(mine.W_E - ref.W_E).abs().max(), (mine.W_U - ref.W_U).abs().max()]
    ids = torch.arange(20)
    diffs.append(
        (mine.effective_embedding(mine.embed(ids)) - ref.effective_embedding(ref.embed(ids)))
        .abs()
        .max()
    )
    found["llama_max_diff"] = float(max(diffs))
    found["llama_n_kv"] = mine.cfg.n_kv_heads

    model, _ = gpt2_hooked()
    model.process_weights_()  # what from_pretrained does by default: fold_ln, centring
    try:
        ModelCircuits.load(model)
        found["processed"] = "accepted"
    except WeightSourceError as exc:
        found["processed"] = str(exc)
    return found


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))))
