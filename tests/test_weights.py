"""Weight sources read back exactly what was written, one tensor at a time, and refuse bad
inputs with one-line errors that name the input and the fix."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.errors import (
    ShapeMismatchError,
    UnsafeWeightsError,
    UnsupportedArchitecture,
    WeightSourceError,
)
from headatlas.weights import GGUFSource, SafetensorsDirSource, open_source
from headatlas.weights.safetensors_dir import SafetensorsFile


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


# ---- safetensors folders --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model("llama-gqa")
    return save_tiny(model, tmp_path_factory.mktemp("sharded") / "m", max_shard_size="200KB")


def test_sharded_safetensors_read_back_equal(sharded: Path) -> None:
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    src = open_source(sharded)
    assert isinstance(src, SafetensorsDirSource)
    state = _state(tiny_model("llama-gqa"))
    stored = set(src.keys())
    for key, value in state.items():
        name = src.resolve(key)
        assert name in stored, key
        assert torch.equal(src.read(name), value), key


def test_reads_only_the_tensors_asked_for(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    original = SafetensorsFile.read

    def spy(self: SafetensorsFile, name: str) -> torch.Tensor:
        read.append(name)
        return original(self, name)

    monkeypatch.setattr(SafetensorsFile, "read", spy)
    mc = ModelCircuits.load(sharded)
    assert read == []  # opening parses headers only
    mc.source.read("model.layers.1.self_attn.v_proj.weight")
    assert read == ["model.layers.1.self_attn.v_proj.weight"]
    read.clear()
    mc.layer(1)
    assert sorted(read) == [
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
    ]


def test_pickle_only_folder_needs_opt_in(tmp_path: Path) -> None:
    model = tiny_model("gpt2")
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.to_json_file(folder / "config.json")
    state = _state(model)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="allow-pickle") as err:
        open_source(folder)
    assert str(folder) in str(err.value)
    src = open_source(folder, allow_pickle=True)
    for key, value in state.items():
        assert torch.equal(src.read(key), value), key


def test_partial_hub_snapshot_is_accepted_but_local_missing_shard_is_not(
    sharded: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(sharded, folder)
    victim = sorted(folder.glob("*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(WeightSourceError, match=victim.name):
        SafetensorsDirSource(folder)
    src = SafetensorsDirSource(folder, require_all_shards=False)
    assert src.keys()


# ---- GGUF -------------------------------------------------------------------------------------


def _permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: Any, path: Path, arch: str, drop: tuple[str, ...] = ()) -> Path:
    """Write a tiny HF model as llama.cpp's converter would (float32 tensors, its name map,
    its layout changes: Q/K permuted for llama, Gemma norms as 1 + w, NeoX qkv regrouped)."""
    import gguf

    c = model.config
    n_layers = c.num_hidden_layers
    n_head = c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_head
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny")
    w.add_block_count(n_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(n_head)
    w.add_context_length(c.max_position_embeddings)
    w.add_vocab_size(c.vocab_size)
    if arch == "gptneox":
        w.add_layer_norm_eps(c.layer_norm_eps)
        w.add_parallel_residual(c.use_parallel_residual)
    else:
        w.add_head_count_kv(n_kv)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_rope_freq_base(10000.0)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    for key, t in _state(model).items():
        base, _, suffix = key.rpartition(".")
        gname = names.get_name(base)
        assert gname is not None, key
        gname = f"{gname}.{suffix}"
        if gname in drop or (gname == "output.weight" and c.tie_word_embeddings):
            continue  # the converter writes no output head when it is tied
        data = t.float().numpy().copy()
        if arch == "llama" and base.endswith("q_proj"):
            data = _permute_like_llama_cpp(data, n_head)
        if arch == "llama" and base.endswith("k_proj"):
            data = _permute_like_llama_cpp(data, n_kv)
        if arch.startswith("gemma") and key.endswith("norm.weight"):
            data = data + 1.0
        if arch == "gptneox" and base.endswith("query_key_value"):
            data = data.reshape(n_head, 3, -1, *data.shape[1:]).swapaxes(0, 1).reshape(data.shape)
        w.add_tensor(gname, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _check_gguf_reads_hf_tensors(model: Any, src: GGUFSource, exact: bool = True) -> None:
    for key, value in _state(model).items():
        name = src.resolve(key)
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            assert name is None  # tied: no output head stored
            continue
        assert name is not None, key
        got = src.read(name)
        if exact:
            assert torch.equal(got, value), key
        else:  # (1 + w) - 1 rounds in float32
            torch.testing.assert_close(got, value, rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model("llama-gqa")
    return write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", "llama")


def test_llama_gguf_reads_back_unpermuted_with_matching_config(llama_gguf: Path) -> None:
    model = tiny_model("llama-gqa")
    src = open_source(llama_gguf)
    assert isinstance(src, GGUFSource)
    _check_gguf_reads_hf_tensors(model, src)
    cfg = src.config()
    hf = model.config
    assert cfg["model_type"] == "llama"
    for key in (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
    ):
        assert cfg[key] == getattr(hf, key), key
    assert cfg["rms_norm_eps"] == pytest.approx(hf.rms_norm_eps)
    a, b = ModelCircuits.load(llama_gguf), ModelCircuits.load(model)
    assert a.cfg == b.cfg
    assert torch.equal(a.layer(1).W_V, b.layer(1).W_V)
    assert torch.equal(a.W_U, b.W_U)
    assert src.display_name() == "tiny"


def test_gemma3_gguf_norms_stored_plus_one(tmp_path: Path) -> None:
    model = tiny_model("gemma3")
    path = write_gguf(model, tmp_path / "tiny-gemma3.gguf", "gemma3")
    src = open_source(path)
    _check_gguf_reads_hf_tensors(model, src, exact=False)
    a, b = ModelCircuits.load(path), ModelCircuits.load(model)
    assert a.cfg == b.cfg
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.effective_embedding(x), b.effective_embedding(x))
    la, lb = a.layer(0), b.layer(0)
    assert la.out_norm is not None and lb.out_norm is not None
    torch.testing.assert_close(la.out_norm(x), lb.out_norm(x))
    assert torch.equal(la.W_V, lb.W_V) and torch.equal(la.W_O, lb.W_O)


def test_gpt_neox_gguf_qkv_regrouped_per_head(tmp_path: Path) -> None:
    model = tiny_model("pythia-sequential")
    path = write_gguf(model, tmp_path / "tiny-neox.gguf", "gptneox")
    src = open_source(path)
    _check_gguf_reads_hf_tensors(model, src)
    a, b = ModelCircuits.load(path), ModelCircuits.load(model)
    assert a.cfg == b.cfg
    for i in range(2):
        assert torch.equal(a.layer(i).W_V, b.layer(i).W_V)
        assert torch.equal(a.layer(i).b_V, b.layer(i).b_V)  # type: ignore[arg-type]


# ---- hub ----------------------------------------------------------------------------------------

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(root: Path, repo: str, model_folder: Path) -> Path:
    org, name = repo.split("/")
    entry = root / f"models--{org}--{name}"
    snap = entry / "snapshots" / _COMMIT
    snap.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(_COMMIT)
    for f in model_folder.iterdir():
        shutil.copy(f, snap / f.name)
    return snap


def test_hub_id_reads_from_offline_cache(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub-cache"
    _fake_hub_cache(cache, "tiny-org/tiny-llama", sharded)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = open_source("tiny-org/tiny-llama")
    assert src.name == "tiny-org/tiny-llama"
    assert src.display_name() == "tiny-llama"
    for key, value in _state(tiny_model("llama-gqa")).items():
        assert torch.equal(src.read(src.resolve(key)), value), key  # type: ignore[arg-type]


def test_hub_snapshot_with_only_the_needed_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub download fetches only shards holding tensors a pass reads; the index lists more."""
    from safetensors.torch import save_file

    model = tiny_model("llama-gqa")
    state = {k: v.contiguous() for k, v in _state(model).items()}
    unneeded = {k for k in state if "q_proj" in k or "k_proj" in k}
    folder = tmp_path / "full"
    folder.mkdir()
    model.config.to_json_file(folder / "config.json")
    save_file({k: v for k, v in state.items() if k not in unneeded}, folder / "model-1.safetensors")
    save_file({k: state[k] for k in unneeded}, folder / "model-2.safetensors")
    weight_map = {
        k: "model-2.safetensors" if k in unneeded else "model-1.safetensors" for k in state
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cache = tmp_path / "hub-cache"
    snap = _fake_hub_cache(cache, "tiny-org/partial", folder)
    (snap / "model-2.safetensors").unlink()  # never downloaded: nothing needed is in it
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mc = ModelCircuits.load("tiny-org/partial")
    ref = ModelCircuits.load(model)
    assert torch.equal(mc.layer(1).W_V, ref.layer(1).W_V)
    assert torch.equal(mc.W_U, ref.W_U)


def test_hub_id_not_cached_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightSourceError, match="not in the local cache") as err:
        open_source("tiny-org/absent-model")
    assert "'tiny-org/absent-model'" in str(err.value)
    assert "HF_HUB_OFFLINE" in str(err.value)


# ---- bad inputs: one line, the right type, the input named, a fix given ----------------------


def _one_line(exc: BaseException, *needles: str) -> None:
    msg = str(exc)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(WeightSourceError) as err:
        open_source(missing)
    _one_line(err.value, str(missing), "does not exist")


def test_missing_gguf_file(tmp_path: Path) -> None:
    missing = tmp_path / "model.gguf"
    with pytest.raises(WeightSourceError) as err:
        open_source(missing)
    _one_line(err.value, str(missing), "does not exist")


def test_folder_without_weights(tmp_path: Path) -> None:
    tiny_model("llama-gqa").config.to_json_file(tmp_path / "config.json")
    with pytest.raises(WeightSourceError) as err:
        open_source(tmp_path)
    _one_line(err.value, str(tmp_path), "no weights", "download")


def test_folder_without_config(sharded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "noconfig"
    shutil.copytree(sharded, folder)
    (folder / "config.json").unlink()
    with pytest.raises(WeightSourceError) as err:
        open_source(folder)
    _one_line(err.value, str(folder), "config.json")


def test_invalid_config_json(sharded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "badconfig"
    shutil.copytree(sharded, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightSourceError) as err:
        ModelCircuits.load(folder)
    _one_line(err.value, "config.json", "not valid JSON")


def test_truncated_safetensors(tmp_path: Path) -> None:
    folder = save_tiny(tiny_model("llama-gqa"), tmp_path / "m")
    shard = folder / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightSourceError) as err:
        open_source(folder)
    _one_line(err.value, str(shard), "truncated", "re-download")
    shard.write_bytes(data[:5])
    with pytest.raises(WeightSourceError) as err:
        open_source(folder)
    _one_line(err.value, str(shard), "not a valid safetensors file")


def test_safetensors_header_shape_disagrees_with_bytes(tmp_path: Path) -> None:
    import struct

    path = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(16))
    with pytest.raises(WeightSourceError) as err:
        SafetensorsFile(path).read("w")
    _one_line(err.value, str(path), "tensor", "re-download")


def test_garbage_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(WeightSourceError) as err:
        open_source(bad)
    _one_line(err.value, str(bad), "not a readable GGUF file", "re-download")


def test_truncated_gguf(llama_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.gguf"
    data = llama_gguf.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(WeightSourceError) as err:
        open_source(bad)
    _one_line(err.value, str(bad), "re-download")


def test_unknown_gguf_architecture(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(path, "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitecture) as err:
        open_source(path)
    _one_line(err.value, "'mamba'", "llama", "gemma3")


def test_config_weights_shape_mismatch(sharded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "edited"
    shutil.copytree(sharded, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    mc = ModelCircuits.load(folder)
    with pytest.raises(ShapeMismatchError) as err:
        mc.layer(0)
    _one_line(err.value, "v_proj", "128)", "config")
    with pytest.raises(ShapeMismatchError) as err:
        _ = mc.W_E
    _one_line(err.value, "embed_tokens", "config")


def test_unknown_model_name() -> None:
    with pytest.raises(WeightSourceError) as err:
        open_source("smollm3")
    _one_line(err.value, "'smollm3'", "smollm2", "gemma3-270m")


def test_single_non_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "weights.pt"
    f.write_bytes(b"x")
    with pytest.raises(WeightSourceError) as err:
        open_source(f)
    _one_line(err.value, str(f), ".gguf")
