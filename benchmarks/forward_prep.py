"""The ``forward`` recipe's preparation (each layer's real input for every source token), in one
run: the previous way (the whole ``*ForCausalLM``, logits over the vocabulary included) against
the body alone (``base_model``: the same hidden states, no LM head), interleaved batch by batch
so shared-CPU noise hits both alike; the inputs asserted bit-equal, so the map's scores, which
read nothing else from this step, are unchanged cell for cell.

    python benchmarks/forward_prep.py [--model gemma3-270m] [--batches 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from headatlas.circuits import ModelCircuits
from headatlas.relations import resolve_relations, tokenize_relation
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.recipe import _FORWARD_BATCH, start_token
from headatlas.weights.transformers_model import load_hf_model


def _inputs(model: torch.nn.Module, inp: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    with torch.no_grad():
        hs = model(input_ids=inp, output_hidden_states=True, use_cache=False).hidden_states
    return [hs[layer][:, -1].float() for layer in range(n_layers)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--batches", type=int, default=0, help="batches timed (0: all)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (CPU shared with other "
          "jobs: the ratio from one run is the result, not seconds)")  # fmt: skip
    circuits = ModelCircuits.load(args.model)
    pairs = []
    for rel in resolve_relations(None):
        tok = tokenize_relation(rel, circuits.tokenizer)
        if tok.usable:
            pairs.append(RelationPairs(rel.name, rel.category, 1, tok.source_ids, tok.target_ids))
    ids = ScoringPlan.build(pairs).source_ids
    t0 = time.perf_counter()
    full = load_hf_model(args.model).eval()
    print(f"{args.model}: {len(ids)} source tokens, V={circuits.cfg.vocab_size}, "
          f"model loaded in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    body = full.base_model
    bos = start_token(circuits.tokenizer)
    starts = list(range(0, len(ids), _FORWARD_BATCH))
    if args.batches:
        starts = starts[: args.batches]
    t_full = t_body = 0.0
    for s in starts:
        chunk = ids[s : s + _FORWARD_BATCH].to(torch.int64)[:, None]
        inp = chunk if bos is None else torch.cat([torch.full_like(chunk, bos), chunk], 1)
        t0 = time.perf_counter()
        a = _inputs(full, inp, circuits.cfg.n_layers)
        t1 = time.perf_counter()
        b = _inputs(body, inp, circuits.cfg.n_layers)
        t2 = time.perf_counter()
        t_full, t_body = t_full + t1 - t0, t_body + t2 - t1
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), "inputs differ"
    n = len(starts)
    print(f"{n} batches of {_FORWARD_BATCH}: whole model {t_full:.1f} s, body alone "
          f"{t_body:.1f} s: {t_full / t_body:.2f}x faster; every layer's inputs bit-equal")  # fmt: skip


if __name__ == "__main__":
    main()
