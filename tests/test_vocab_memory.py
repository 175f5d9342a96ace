"""A map holds one vocabulary-sized matrix: the embedding's needed rows and the folded
unembedding are streamed from the checkpoint, equal bit for bit to the whole-matrix path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

import headatlas.circuits as circuits_module
from headatlas.circuits import ModelCircuits
from headatlas.scoring.kernel.factored import SharedU
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.scoring.readout import fold_unembedding
from headatlas.weights.safetensors_dir import SafetensorsDirSource

FAMILIES = ("gpt2", "pythia-parallel", "phi", "llama-gqa", "gemma2")


def _whole_fold(c: ModelCircuits, final_norm: bool, dtype: torch.dtype) -> torch.Tensor:
    """The fold from the whole W_U, as it was computed before streaming."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    W_U = c.W_U.to(work)
    if not final_norm:
        return W_U.to(dtype)
    norm = c.final_norm()
    G = W_U * norm.scale(W_U.shape[0]).to(work)[:, None]
    if norm.kind == "layernorm":
        G = G - G.mean(0, keepdim=True)
    return G.to(dtype)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name in FAMILIES:
        folder = save_tiny(tiny_model(name), tmp_path_factory.mktemp(name))
        gpt2_tokenizer().save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few rows, so every stream has many blocks and a ragged last one."""
    monkeypatch.setattr(circuits_module, "ROW_BLOCK_BYTES", 4 * 64 * 7)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_fold_equals_the_whole_matrix_fold(
    folders: dict[str, Path], name: str, dtype: torch.dtype
) -> None:
    for final_norm in (True, False):
        streamed, whole = ModelCircuits.load(folders[name]), ModelCircuits.load(folders[name])
        got = fold_unembedding(streamed, final_norm, dtype)
        assert got.is_contiguous() and got.dtype == dtype
        assert torch.equal(got, _whole_fold(whole, final_norm, dtype))
        # Hashed as a whole on the way: the same fingerprint as a full read.
        assert streamed.content_fingerprint() == whole.content_fingerprint()
        assert streamed._W_U is None and streamed._W_E is None  # nothing else kept


@pytest.mark.parametrize("name", FAMILIES)
def test_embedding_rows_equal_embed_and_hash_the_whole(folders: dict[str, Path], name: str) -> None:
    streamed, whole = ModelCircuits.load(folders[name]), ModelCircuits.load(folders[name])
    V = streamed.cfg.vocab_size
    ids = torch.tensor([5, 0, 3, V - 1, 5, 17, 9, 3])
    assert torch.equal(streamed.embed_rows(ids), whole.embed(ids))
    assert streamed._W_E is None
    assert streamed.content_fingerprint() == whole.content_fingerprint()
    with pytest.raises(IndexError):
        streamed.embed_rows(torch.tensor([V + 10_000]))


@pytest.mark.parametrize("name", ["phi", "gpt2"])  # untied with a bias; tied
def test_safetensors_reads_vocabulary_matrices_by_blocks_only(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A map of a folder never reads the embedding or the output head whole, keeps neither,
    drops block 0's MLP after use, makes no transposed copy of U, and its scores equal a map
    that read them whole."""
    whole_reads: list[str] = []
    read = SafetensorsDirSource.read

    def spy(self: SafetensorsDirSource, name: str) -> torch.Tensor:
        whole_reads.append(name)
        return read(self, name)

    folder = folders[name]
    reference = ModelCircuits.load(folder)
    vocabulary = {reference._name(reference.spec.embed, "weight"), reference._unembed_name()[1]}
    _ = reference.W_E, reference.W_U, reference.block0_mlp()  # held whole, as before
    options = MapOptions()
    expected = map_heads(reference, ["Knowledge"], options=options, progress=False, log=print)

    monkeypatch.setattr(SafetensorsDirSource, "read", spy)
    shared: list[SharedU] = []
    make = SharedU.__init__

    def keep(self: SharedU, U: torch.Tensor) -> None:
        make(self, U)
        shared.append(self)

    monkeypatch.setattr(SharedU, "__init__", keep)
    c = ModelCircuits.load(folder)
    got = map_heads(c, ["Knowledge"], options=options, progress=False, log=print)
    assert whole_reads and not vocabulary & set(whole_reads)
    assert c._W_E is None and c._W_U is None and c._mlp0 is None
    assert len(shared) == 1 and shared[0]._UT is None  # one U for every layer, no transpose
    assert got.scores.equals(expected.scores)
    assert got.manifest["model"]["fingerprint"] == expected.manifest["model"]["fingerprint"]
    assert got.manifest["cache_key"] == expected.manifest["cache_key"]
