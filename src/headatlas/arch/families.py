"""One entry per supported model family. Adding a family means adding data here, plus its
exactness test against Hugging Face's forward pass (tests/test_arch_exact.py)."""

from __future__ import annotations

from headatlas.arch.spec import ArchSpec, MLPSpec, NormSpec

GPT2 = ArchSpec(
    family="gpt2",
    model_types=("gpt2",),
    embed="transformer.wte",
    unembed="lm_head",
    final_norm="transformer.ln_f",
    layers="transformer.h",
    attn="attn",
    attn_norm="ln_1",
    mlp_norm="ln_2",
    qkv_layout="gpt2_fused",
    v_proj="c_attn",
    o_proj="c_proj",
    conv1d=True,
    mlp=MLPSpec(up="mlp.c_fc", down="mlp.c_proj", act_keys=("activation_function",)),
    norm=NormSpec("layernorm"),
    tied_default=True,
    n_kv_keys=(),
    notes=("Positional embeddings are not part of the OV circuit and are not read.",),
)

GPT_NEOX = ArchSpec(
    family="gpt_neox",
    model_types=("gpt_neox",),
    embed="gpt_neox.embed_in",
    unembed="lm_head",
    unembed_aliases=("embed_out",),  # transformers < 5 and the Pythia checkpoints
    final_norm="gpt_neox.final_layer_norm",
    layers="gpt_neox.layers",
    attn="attention",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    qkv_layout="neox_fused",
    v_proj="query_key_value",
    o_proj="dense",
    mlp=MLPSpec(up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", default_act="gelu"),
    norm=NormSpec("layernorm"),
    parallel_residual_key="use_parallel_residual",
    parallel_default=True,
    n_kv_keys=(),
)

PHI = ArchSpec(
    family="phi",
    model_types=("phi",),
    embed="model.embed_tokens",
    unembed="lm_head",
    final_norm="model.final_layernorm",
    layers="model.layers",
    attn="self_attn",
    attn_norm="input_layernorm",
    mlp_norm="input_layernorm",  # parallel block: attention and MLP share one norm
    qkv_layout="separate",
    q_proj="q_proj",
    k_proj="k_proj",
    v_proj="v_proj",
    o_proj="dense",
    mlp=MLPSpec(up="mlp.fc1", down="mlp.fc2"),
    norm=NormSpec("layernorm"),
    unembed_bias=True,
    parallel_default=True,
    notes=("Phi's lm_head bias is left out of scores unless unembed_bias is set.",),
)

LLAMA = ArchSpec(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
    embed="model.embed_tokens",
    unembed="lm_head",
    final_norm="model.norm",
    layers="model.layers",
    attn="self_attn",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    qkv_layout="separate",
    q_proj="q_proj",
    k_proj="k_proj",
    v_proj="v_proj",
    o_proj="o_proj",
    q_norm="q_norm",  # Qwen3 has it; Llama, Mistral, Qwen2 do not
    k_norm="k_norm",
    mlp=MLPSpec(up="mlp.up_proj", down="mlp.down_proj", gate="mlp.gate_proj", default_act="silu"),
    norm=NormSpec("rmsnorm"),
    notes=("Grouped-query attention: query head h reads KV head h // (n_heads / n_kv_heads).",),
)

GEMMA = ArchSpec(
    family="gemma",
    model_types=("gemma",),
    embed="model.embed_tokens",
    unembed="lm_head",
    final_norm="model.norm",
    layers="model.layers",
    attn="self_attn",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    qkv_layout="separate",
    q_proj="q_proj",
    k_proj="k_proj",
    v_proj="v_proj",
    o_proj="o_proj",
    mlp=MLPSpec(
        up="mlp.up_proj",
        down="mlp.down_proj",
        gate="mlp.gate_proj",
        act_keys=("hidden_activation", "hidden_act"),
        default_act="gelu_pytorch_tanh",
        # Gemma 1 configs say "gelu" but mean the tanh approximation (GemmaConfig rewrites it).
        act_renames=(("gelu", "gelu_pytorch_tanh"),),
    ),
    norm=NormSpec("rmsnorm", plus_one=True),
    embed_scale_sqrt_d=True,
    tied_default=True,
)

_GEMMA2_NOTES = (
    "The attention output passes a post-attention RMSNorm before the residual stream: a head's "
    "output is scaled by that norm's gain (1 + w); its 1/rms factor is a positive per-row scalar "
    "and leaves top-k unchanged.",
    "Final logit soft-capping is monotone and leaves top-k unchanged.",
)

GEMMA2 = ArchSpec(
    family="gemma2",
    model_types=("gemma2", "gemma3_text", "gemma3"),
    embed="model.embed_tokens",
    unembed="lm_head",
    final_norm="model.norm",
    layers="model.layers",
    attn="self_attn",
    attn_norm="input_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    attn_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
    qkv_layout="separate",
    q_proj="q_proj",
    k_proj="k_proj",
    v_proj="v_proj",
    o_proj="o_proj",
    q_norm="q_norm",  # Gemma 3 has it, Gemma 2 does not
    k_norm="k_norm",
    default_query_scalar=256.0,
    mlp=MLPSpec(
        up="mlp.up_proj",
        down="mlp.down_proj",
        gate="mlp.gate_proj",
        act_keys=("hidden_activation", "hidden_act"),  # Gemma2MLP reads hidden_activation
        default_act="gelu_pytorch_tanh",
    ),
    norm=NormSpec("rmsnorm", plus_one=True),
    embed_scale_sqrt_d=True,
    tied_default=True,
    softcap_key="final_logit_softcapping",
    notes=_GEMMA2_NOTES,
)

FAMILIES: tuple[ArchSpec, ...] = (GPT2, GPT_NEOX, PHI, LLAMA, GEMMA, GEMMA2)
