"""CPU cost of schema-constrained decoding for the describe step: llguidance against xgrammar.

Both libraries compile the answer schema (headatlas.describe.answer_schema) for the SmolLM2
tokenizer, then walk the tokens of real answers, computing the next-token mask before each token
as generation would. Printed: compile time, mean and worst mask time per token, and the mask
time as a share of one SmolLM2 forward step on the same CPU (measured here with a KV cache), so
the overhead reads as a ratio from one run. xgrammar is optional (pip install xgrammar; it pulls
in triton); the shipped backend uses llguidance.

With ``--heads N``, also describes N synthetic heads with the packaged SmolLM2 (structured),
once reusing the system turn's key/value cache and once with a full prefill per head, and prints
seconds per head for both.

    PYTHONPATH=src python benchmarks/describe_grammar.py [--threads 1] [--no-model] [--heads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from headatlas.describe.answer_schema import answer_schema

ANSWERS = [
    {
        "inputs": "country names",
        "pattern": "country to its capital city",
        "description": "Maps country names to their capital cities and demonyms.",
    },
    {"description": "Unclear"},
    {
        "inputs": "verbs in present tense",
        "pattern": "verb to past tense form",
        "description": "Moves a verb to its past tense, e.g. walk to walked; also copies the verb.",
    },
]


def load_tokenizer() -> Any:
    """The packaged SmolLM2 tokenizer."""
    from transformers import AutoTokenizer

    from headatlas.weights.packaged import smollm2_path

    path = smollm2_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def walk_llguidance(tokenizer: Any, vocab: int, schema: str, answers: list[list[int]]) -> dict:
    """Compile, then mask + consume every answer token; seconds per step."""
    import llguidance
    import llguidance.hf
    import llguidance.torch as llt

    start = time.perf_counter()
    ll_tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    tok_s = time.perf_counter() - start
    start = time.perf_counter()
    layout = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps({**json.loads(schema), "x-guidance": layout})
    )
    matcher = llguidance.LLMatcher(ll_tok, grammar)
    compile_s = time.perf_counter() - start
    bitmask = llt.allocate_token_bitmask(1, vocab)
    steps: list[float] = []
    for ids in answers:
        matcher = llguidance.LLMatcher(ll_tok, grammar)
        for token in [*ids, tokenizer.eos_token_id]:
            t = time.perf_counter()
            llt.fill_next_token_bitmask(matcher, bitmask, 0)
            steps.append(time.perf_counter() - t)
            assert matcher.consume_token(token), matcher.get_error()
        assert matcher.is_stopped() or matcher.is_accepting()
    return {"tokenizer_s": tok_s, "compile_s": compile_s, "steps": steps}


def walk_xgrammar(tokenizer: Any, vocab: int, schema: str, answers: list[list[int]]) -> dict:
    """The same walk with xgrammar."""
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info)
    tok_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(schema, any_whitespace=False, separators=(", ", ": "))
    compile_s = time.perf_counter() - start
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    steps: list[float] = []
    for ids in answers:
        matcher = xgr.GrammarMatcher(compiled)
        for token in [*ids, tokenizer.eos_token_id]:
            t = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            steps.append(time.perf_counter() - t)
            assert matcher.accept_token(token), token
        assert matcher.is_terminated()
    return {"tokenizer_s": tok_s, "compile_s": compile_s, "steps": steps}


def forward_step_seconds(prompt_len: int = 600, steps: int = 20) -> float:
    """Mean seconds of one cached SmolLM2 decoding step after a ``prompt_len`` prompt."""
    from transformers import AutoModelForCausalLM

    from headatlas.weights.packaged import smollm2_path

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.randint(100, 40000, (1, prompt_len))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        token = ids[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        return (time.perf_counter() - start) / steps


def describe_seconds(n_heads: int) -> tuple[float, float]:
    """Mean seconds per head of the structured SmolLM2 describer: (system cache, full prefill)."""
    from headatlas.describe import TransformersChatBackend, build_prompt

    ops = [(f" word{i}", [f" w{i}", f" W{i}", f"word{i}s"]) for i in range(15)]
    means = []
    for reuse in (True, False):
        backend = TransformersChatBackend()
        backend.use_system_cache = reuse
        backend.complete(build_prompt(0, 0, ops[:2]))  # load the model, fill the cache
        start = time.perf_counter()
        for head in range(n_heads):
            backend.complete(build_prompt(1, head, ops[head:] + ops[:head]))
        means.append((time.perf_counter() - start) / n_heads)
    return means[0], means[1]


def main() -> None:
    """Run both walks and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-model", action="store_true", help="skip the forward-step timing")
    parser.add_argument("--heads", type=int, default=0, help="also time N real describe calls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    vocab = len(tokenizer)
    schema = json.dumps(answer_schema())
    answers = [tokenizer.encode(json.dumps(a), add_special_tokens=False) for a in ANSWERS]
    n_tokens = sum(len(a) + 1 for a in answers)
    print(f"{len(answers)} answers, {n_tokens} mask steps, vocabulary {vocab}")
    forward = None if args.no_model else forward_step_seconds()
    if forward is not None:
        print(f"SmolLM2 decoding step (KV cache, 600-token prompt): {forward * 1e3:.1f} ms")
    for name, walk in (("llguidance", walk_llguidance), ("xgrammar", walk_xgrammar)):
        try:
            result = walk(tokenizer, vocab, schema, answers)
        except ImportError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        steps = result["steps"]
        mean = statistics.fmean(steps)
        line = (
            f"{name:>10}: tokenizer setup {result['tokenizer_s']:.2f} s, schema compile "
            f"{result['compile_s'] * 1e3:.1f} ms, mask {mean * 1e3:.3f} ms/token mean, "
            f"{max(steps) * 1e3:.3f} ms worst"
        )
        if forward is not None:
            line += f", {mean / forward:.1%} of a decoding step"
        print(line)
    if args.heads:
        cached, full = describe_seconds(args.heads)
        print(
            f"structured SmolLM2 describer: {cached:.2f} s/head with the system-turn cache, "
            f"{full:.2f} s/head with a full prefill ({full / cached:.2f}x)"
        )


if __name__ == "__main__":
    main()
