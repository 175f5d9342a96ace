"""Results you can trust (issue 12): content fingerprints and one results folder per source,
labels re-derived on every run, options that check themselves (API and CLI alike), results
files checked when read, exit codes that tell, and no traceback for bad input."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from tiny_models import gpt2, gpt2_tokenizer, save_tiny, tiny_model

import headatlas
from headatlas.circuits import ModelCircuits
from headatlas.cli.main import build_parser, main
from headatlas.errors import OptionError, ResultsError, ValidationInputError
from headatlas.report.atlas_html import atlas_data
from headatlas.scoring.categories import categorize_heads
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.store import load_results, model_slug
from headatlas.validate.options import ValidationOptions
from headatlas.weights.safetensors_dir import SafetensorsDirSource

SRC = Path(headatlas.__file__).resolve().parent  # the package under test
RELS = ("--relations", "copying", "Knowledge")


def run_cli(*args: object) -> int:
    return main([str(a) for a in args])


def _model_folder(folder: Path, seed: int | None = None) -> Path:
    """A tiny GPT-2 folder with tokenizer; ``seed`` re-draws every weight (same shapes)."""
    model = tiny_model("gpt2")
    if seed is not None:
        model = gpt2()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    save_tiny(model, folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_folder(tmp_path_factory.mktemp("m") / "final")


# ------------------------------------------------------------ fingerprints, one folder per source


def test_two_finetunes_saved_as_final_do_not_share_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _model_folder(tmp_path / "runs" / "a" / "final", seed=1)
    b = _model_folder(tmp_path / "runs" / "b" / "final", seed=2)
    out = tmp_path / "out"
    assert run_cli("map", a, "--out", out, *RELS, "--quiet") == 0
    assert run_cli("map", b, "--out", out, *RELS, "--quiet") == 0
    assert "reusing" not in capsys.readouterr().err
    ra, rb = load_results(out / model_slug(str(a))), load_results(out / model_slug(str(b)))
    assert ra.directory != rb.directory
    assert ra.manifest["model"]["fingerprint"] != rb.manifest["model"]["fingerprint"]
    assert not ra.scores["score"].equals(rb.scores["score"])
    assert rb.manifest["timings"]["layers_computed"] == 2


def test_weights_changed_in_place_recompute_the_changed_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model_folder(tmp_path / "final")
    out = tmp_path / "out"
    assert run_cli("map", model, "--out", out, *RELS, "--quiet") == 0
    first = load_results(out / model_slug(str(model)))
    # Same shapes, same header, same size: only layer 1's value weights change.
    changed = gpt2()
    changed.load_state_dict(tiny_model("gpt2").state_dict())
    with torch.no_grad():
        changed.transformer.h[1].attn.c_attn.weight[:, -64:].mul_(-1.0)
    save_tiny(changed, model)
    capsys.readouterr()
    assert run_cli("map", model, "--out", out, *RELS, "--quiet") == 0
    assert "reusing" not in capsys.readouterr().err
    second = load_results(out / model_slug(str(model)))
    assert second.manifest["timings"]["layers_computed"] == 1  # layer 0 kept, layer 1 redone
    assert second.manifest["model"]["fingerprint"] != first.manifest["model"]["fingerprint"]
    fresh = map_heads(ModelCircuits.load(model), ["copying", "Knowledge"], progress=False)
    pd.testing.assert_frame_equal(second.scores, fresh.scores)


def test_fingerprint_is_the_content_of_the_tensors_read(tmp_path: Path) -> None:
    one = _model_folder(tmp_path / "one")
    two = _model_folder(tmp_path / "two")
    r1 = map_heads(ModelCircuits.load(one), ["copying"], progress=False)
    r2 = map_heads(ModelCircuits.load(two), ["copying"], progress=False)
    assert r1.manifest["model"]["fingerprint"] == r2.manifest["model"]["fingerprint"]
    assert r1.manifest["layer_digests"] == r2.manifest["layer_digests"]


# ------------------------------------------------------------ labels from scores on every run


def test_other_threshold_or_suppression_relabels_a_reused_map(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_cli("map", folder, "--out", out, *RELS, "--quiet") == 0
    before = load_results(out / model_slug(str(folder)))
    capsys.readouterr()
    relabel = ("--threshold", "0", "--label-rule", "paper")  # threshold 0 never beats a null
    assert run_cli("map", folder, "--out", out, *RELS, "--quiet", *relabel) == 0
    assert "reusing the finished map" in capsys.readouterr().err
    after = load_results(out / model_slug(str(folder)))
    assert after.manifest["timings"]["layers_computed"] == 0
    assert after.manifest["options"]["threshold"] == 0
    relabelled = categorize_heads(after.scores, 0.0, False, "paper")
    pd.testing.assert_frame_equal(after.categories, relabelled)
    assert not relabelled["label"].equals(before.categories["label"])
    pd.testing.assert_frame_equal(after.scores, before.scores)
    assert run_cli("map", folder, "--out", out, *RELS, "--quiet", "--use-suppression") == 0
    sup = load_results(out / model_slug(str(folder)))
    assert sup.manifest["options"]["use_suppression"] is True
    assert sup.manifest["options"]["threshold"] == 0.15
    pd.testing.assert_frame_equal(sup.categories, categorize_heads(sup.scores, 0.15, True))


def test_atlas_reads_the_maps_threshold(folder: Path, tmp_path: Path) -> None:
    results = map_heads(
        ModelCircuits.load(folder), ["copying"], options=MapOptions(threshold=0.4), out=tmp_path
    )
    assert atlas_data(results)["threshold"] == 400
    js = (SRC / "report" / "assets" / "atlas.js").read_text()
    assert "0.15" not in js and "150" not in js


@pytest.mark.browser
def test_atlas_page_bolds_scores_at_the_maps_threshold(tmp_path: Path) -> None:
    from report_fixtures import AtlasPage, launch_chromium, make_results

    from headatlas.report.atlas_html import render_atlas_html
    from headatlas.store import MANIFEST, write_json_atomic

    directory = make_results(tmp_path, 2, 2, name="thr", seed=5)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["options"]["threshold"] = 0.05
    write_json_atomic(manifest, directory / MANIFEST)
    results = load_results(directory)
    page_path = tmp_path / "atlas.html"
    page_path.write_text(render_atlas_html([results]))
    for browser in launch_chromium():
        page = AtlasPage(browser, page_path)
        page.cell(0, 0, 0, 2).click()
        side = page.page.locator("#model-0 aside.side")
        assert "score \u2265 0.050" in side.inner_text()
        rows = side.locator("table.scores tbody tr")
        s = results.scores
        head = s[(s["layer"] == 0) & (s["head"] == 0)].set_index("relation")["score"]
        for k in range(rows.count()):
            row = rows.nth(k)
            score = head[row.locator("td.rel").inner_text()]
            bold = "hit" in (row.get_attribute("class") or "")
            assert bold == (round(score * 1000) >= 50), (score, bold)
        page.close()


# ------------------------------------------------------------ options check themselves


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k": 0}, "option k (--k)"),
        ({"k": 2.5}, "option k (--k)"),
        ({"k_per_relation": {"copying": 0}}, "k_per_relation[copying]"),
        ({"k_per_relation": {"": 3}}, "bad name"),
        ({"min_pairs": 0}, "option min_pairs"),
        ({"threshold": 2}, "option threshold"),
        ({"threshold": -0.1}, "option threshold"),
        ({"dtype": "float16"}, "dtype 'float16'"),
        ({"pre_norm": "no"}, "option pre_norm"),
    ],
)
def test_map_options_refuse_bad_values(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(OptionError) as err:
        MapOptions(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"batch_size": 0}, "option batch_size"),
        ({"max_prompts": 0}, "option max_prompts"),
        ({"templates": ("no slot here",)}, "slot <X>"),
        ({"templates": ()}, "option templates"),
        ({"steps": (0, 2)}, "option steps"),
        ({"random_draws": 0}, "option random_draws"),
        ({"seed": -1}, "option seed"),
        ({"control_max_overlap": 1.5}, "option control_max_overlap"),
        ({"max_heads": 0}, "option max_heads"),
    ],
)
def test_validation_options_refuse_bad_values(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationInputError) as err:
        ValidationOptions(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_map_checks_options_against_relations_and_vocabulary(folder: Path) -> None:
    circuits = ModelCircuits.load(folder)
    with pytest.raises(OptionError, match="not in this map: nosuch"):
        map_heads(circuits, ["copying"], options=MapOptions(k_per_relation={"nosuch": 3}))
    with pytest.raises(OptionError, match="exceeds the vocabulary size"):
        map_heads(circuits, ["copying"], options=MapOptions(k=100_000))
    with pytest.raises(OptionError, match="exceeds the vocabulary size"):
        map_heads(circuits, ["copying"], options=MapOptions(k_per_relation={"copying": 10**6}))


def _switches(parser: argparse.ArgumentParser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def test_every_option_field_is_a_switch_with_its_docstring() -> None:
    from headatlas.cli.dataclass_args import field_docs

    parser = build_parser()
    for command in ("map", "validate"):
        switches = _switches(parser, command)
        for f in dataclasses.fields(MapOptions):
            name = f.metadata.get("cli", "--" + f.name.replace("_", "-"))
            assert name in switches, (command, name)
    validate = _switches(parser, "validate")
    for f in dataclasses.fields(ValidationOptions):
        assert "--" + f.name.replace("_", "-") in validate, f.name
    docs = field_docs(MapOptions)
    assert set(docs) == {f.name for f in dataclasses.fields(MapOptions)}
    help_text = " ".join(
        build_parser()._subparsers._group_actions[0].choices["map"].format_help().split()
    )  # type: ignore[union-attr]
    assert " ".join(docs["min_pairs"].split()[:4]) in help_text


def test_a_new_field_appears_on_the_command_line_by_itself() -> None:
    from headatlas.cli.dataclass_args import add_dataclass_args, dataclass_from_args

    @dataclasses.dataclass(frozen=True)
    class Extended(MapOptions):
        flavour: str = "maps"
        """How a head's input is flavoured (a new switch nobody wrote by hand)."""
        rounds: int | None = None
        """Rounds of something."""

        def __post_init__(self, *switches: Any) -> None:
            super().__post_init__(*switches)
            if self.flavour not in ("maps", "other"):
                raise OptionError(f"option flavour (--flavour) is unknown: {self.flavour}")

    p = argparse.ArgumentParser()
    add_dataclass_args(p, Extended)
    assert "a new switch nobody wrote by hand" in " ".join(p.format_help().split())
    args = p.parse_args(["--flavour", "other", "--rounds", "3", "--k-relation", "copying=2"])
    made = dataclass_from_args(Extended, args)
    assert made.flavour == "other" and made.rounds == 3 and made.k_per_relation == {"copying": 2}
    assert dataclass_from_args(Extended, p.parse_args([])) == Extended()
    with pytest.raises(OptionError, match="flavour"):
        dataclass_from_args(Extended, p.parse_args(["--flavour", "x"]))


# ------------------------------------------------------------ results files checked when read


def test_corrupt_scores_parquet_is_recomputed_by_map_and_named_by_figure(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_cli("map", folder, "--out", out, *RELS, "--quiet") == 0
    directory = out / model_slug(str(folder))
    good = pd.read_parquet(directory / "scores.parquet")
    (directory / "scores.parquet").write_bytes(b"PAR1 this is not parquet")
    capsys.readouterr()
    assert run_cli("figure", directory, "--out", tmp_path / "f.png") == 2
    err = capsys.readouterr().err
    assert "scores.parquet is unreadable" in err and err.count("\n") == 1
    assert run_cli("map", folder, "--out", out, *RELS, "--quiet") == 0
    assert "scores.parquet is unreadable" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(directory / "scores.parquet"), good)
    assert run_cli("figure", directory, "--out", tmp_path / "f.png") == 0


def test_corrupt_partial_layer_file_is_recomputed(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headatlas.scoring.mapping as mapping

    original = mapping.layer_scores
    done: list[int] = []

    def stop_after_layer_0(plan: Any, up: Any, down: Any) -> Any:
        if done:
            raise KeyboardInterrupt
        done.append(1)
        return original(plan, up, down)

    monkeypatch.setattr(mapping, "layer_scores", stop_after_layer_0)
    with pytest.raises(KeyboardInterrupt):
        map_heads(ModelCircuits.load(folder), ["copying"], out=tmp_path, progress=False)
    monkeypatch.setattr(mapping, "layer_scores", original)
    (saved,) = (tmp_path / model_slug(str(folder)) / "partial").rglob("layer_0000-*.parquet")
    saved.write_bytes(saved.read_bytes()[:40])  # cut short, as by a full disk
    said: list[str] = []
    res = map_heads(
        ModelCircuits.load(folder), ["copying"], out=tmp_path, progress=False, log=said.append
    )
    assert any(saved.name in m and "unreadable" in m for m in said), said
    assert res.manifest["timings"]["layers_computed"] == 2
    fresh = map_heads(ModelCircuits.load(folder), ["copying"], progress=False)
    pd.testing.assert_frame_equal(res.scores, fresh.scores)


def test_describe_exits_nonzero_when_every_head_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chat_server import ChatServer, Reply
    from test_describe import make_results as salient_results

    directory = salient_results(tmp_path / "d")
    with ChatServer(Reply("I cannot answer in JSON, sorry.")) as server:
        rc = run_cli(
            "describe", directory, "--base-url", server.url, "--model", "m", "--quiet",
            "--timeout", "5",
        )  # fmt: skip
    captured = capsys.readouterr()
    assert "0 ok" in captured.out and "3 failed" in captured.out
    assert rc == 1
    assert "every head failed" in captured.err


# ------------------------------------------------------------ no traceback for bad input


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    no_tok = root / "no-tokenizer"
    save_tiny(tiny_model("gpt2"), no_tok)
    pickles = root / "pickles"
    pickles.mkdir()
    shutil.copy(no_tok / "config.json", pickles / "config.json")
    (pickles / "pytorch_model.bin").write_bytes(b"\x80\x04not a zip, not a pickle either")
    legacy = root / "legacy-pickle"
    legacy.mkdir()
    shutil.copy(no_tok / "config.json", legacy / "config.json")
    torch.save({"w": [1, 2, 3]}, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    a_file = root / "a-file"
    a_file.write_text("x")
    results = root / "results"
    assert run_cli("map", folder, "--out", results, "--relations", "copying", "--quiet") == 0
    salient = ["--all", "--out", results, "--tokens", "2", "--mappings", "2", "--relations"]
    assert run_cli("salient", folder, *salient) == 0
    broken_manifest = root / "broken"
    shutil.copytree(results / model_slug(str(folder)), broken_manifest)
    (broken_manifest / "manifest.json").write_text("{not json")
    garbage_gguf = root / "g.gguf"
    garbage_gguf.write_bytes(b"GGUF" + bytes(200))
    return {
        "no_tok": no_tok,
        "pickles": pickles,
        "legacy": legacy,
        "file": a_file,
        "results": results / model_slug(str(folder)),
        "broken": broken_manifest,
        "gguf": garbage_gguf,
        "model": folder,
    }


SWEEP: list[tuple[str, list[str], str]] = [
    ("info missing path", ["info", "./no/such/model"], "does not exist"),
    ("info not a model file", ["info", "{file}"], "not .gguf"),
    ("info garbage gguf", ["info", "{gguf}"], "not a readable GGUF"),
    ("info url", ["info", "https://example.com/model"], "is a URL"),
    ("info odd hub id", ["info", "org/name/with/more"], ""),
    ("info empty", ["info", ""], "empty name"),
    ("map no tokenizer", ["map", "{no_tok}", "--out", "{tmp}/o", "--quiet"], "no tokenizer files"),
    ("map non-zip pickle", ["map", "{pickles}", "--allow-pickle", "--out", "{tmp}/o"], "pytorch_model.bin"),
    ("map legacy pickle", ["map", "{legacy}", "--allow-pickle", "--out", "{tmp}/o"], "pytorch_model.bin"),
    ("map out is a file", ["map", "{model}", "--out", "{file}/sub", "--relations", "copying"], "a-file"),
    ("map out under a file", ["map", "{model}", "--out", "{file}", "--relations", "copying"], "a-file"),
    ("map bad relations file", ["map", "{model}", "--relations-file", "{file}", "--out", "{tmp}"], "a-file"),
    ("salient no tokenizer", ["salient", "{no_tok}", "--layer", "0", "--head", "0"], "no tokenizer files"),
    ("salient out is a file", ["salient", "{model}", "--all", "--out", "{file}/x"], "a-file"),
    ("salient url", ["salient", "http://x/y", "--layer", "0", "--head", "0"], "is a URL"),
    ("figure missing", ["figure", "{tmp}/nothing"], "does not exist"),
    ("figure broken manifest", ["figure", "{broken}"], "not valid JSON"),
    ("figure out under a file", ["figure", "{results}", "--out", "{file}/x.png"], "a-file"),
    ("figure bad extension", ["figure", "{results}", "--out", "{tmp}/x.docx"], "docx"),
    ("report out under a file", ["report", "{results}", "--out", "{file}/x.html"], "a-file"),
    ("report missing", ["report", "{tmp}/nothing"], "does not exist"),
    ("describe missing", ["describe", "{tmp}/nothing", "--base-url", "http://127.0.0.1:9/v1"], "nothing"),
    ("describe bad url", ["describe", "{results}", "--base-url", "not a url", "--model", "m"], "not a url"),
    ("describe ftp url", ["describe", "{results}", "--base-url", "ftp://x/v1", "--model", "m"], "ftp://x/v1"),
    ("describe meta device", ["describe", "{results}", "--backend", "transformers", "--device", "meta"], "holds no values"),
    ("validate meta device", ["validate", "{model}", "--device", "meta", "--relations", "copying", "--out", "{tmp}/o"], "holds no values"),
    ("validate no tokenizer", ["validate", "{no_tok}", "--out", "{tmp}/o"], "no tokenizer files"),
    ("validate bad template", ["validate", "{model}", "--templates", "no slot"], "slot <X>"),
    ("validate out under a file", ["validate", "{model}", "--out", "{file}/o", "--relations", "copying"], "a-file"),
    ("export missing", ["export", "{tmp}/nothing", "{tmp}/x"], "does not exist"),
    ("export broken manifest", ["export", "{broken}", "{tmp}/x"], "not valid JSON"),
    ("export out is a file", ["export", "{results}", "{file}"], "a-file"),
    ("export out under a file", ["export", "{results}", "{file}/x", "--format", "headvis"], "a-file"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "needle"), SWEEP, ids=[c for c, _, _ in SWEEP])
def test_bad_input_sweep_gives_one_line_errors(
    case: str,
    argv: list[str],
    needle: str,
    bad_inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {k: str(v) for k, v in bad_inputs.items()} | {"tmp": str(tmp_path)}
    rc = run_cli(*[a.format(**names) for a in argv])
    captured = capsys.readouterr()
    assert rc != 0, case
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("headatlas: error:")]
    assert len(errors) == 1, captured.err
    assert needle in errors[0], (needle, errors[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("command", ["describe", "validate", "map"])
def test_cuda_asked_for_without_a_gpu_is_one_line_error(
    command: str, bad_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = str(bad_inputs["results"] if command == "describe" else bad_inputs["model"])
    extra = ["--backend", "transformers"] if command == "describe" else ["--out", str(tmp_path)]
    rc = run_cli(command, where, "--device", "cuda", *extra)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("headatlas: error:") and "no CUDA GPU" in err, err


def test_every_subcommand_is_in_the_sweep() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    swept = {argv[0] for _, argv, _ in SWEEP}
    assert set(sub.choices) <= swept | {"calibrate", "sweep", "diff"}, set(sub.choices) - swept


# ------------------------------------------------------------ libraries made for the job


class RecordingSource(SafetensorsDirSource):
    """A real safetensors folder that notes which tensors were read whole."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.whole: list[str] = []
        self.sliced: list[tuple[str, int, int, int]] = []

    def read(self, name: str) -> torch.Tensor:
        self.whole.append(name)
        return super().read(name)

    def read_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        self.sliced.append((name, dim, start, stop))
        return super().read_slice(name, dim, start, stop)


def test_fused_qkv_reads_only_the_value_third(folder: Path) -> None:
    source = RecordingSource(folder)
    c = ModelCircuits(source)
    ov = c.layer(0)
    assert not [n for n in source.whole if "c_attn" in n]
    assert ("transformer.h.0.attn.c_attn.weight", 1, 128, 192) in source.sliced
    full = source.read("transformer.h.0.attn.c_attn.weight")
    assert torch.equal(
        source.read_slice("transformer.h.0.attn.c_attn.weight", 1, 128, 192), full[:, 128:]
    )
    reference = ModelCircuits.load(tiny_model("gpt2")).layer(0)
    assert torch.equal(ov.W_V, reference.W_V) and torch.equal(ov.b_V, reference.b_V)  # type: ignore[arg-type]


def _calls_from_pretrained(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "from_pretrained"
        and isinstance(node.value, ast.Name)
        and node.value.id == "AutoModelForCausalLM"
        for node in ast.walk(tree)
    )


def test_one_loader_for_transformers_models(folder: Path, tmp_path: Path) -> None:
    from headatlas.weights.hf_model import load_causal_lm

    loaders = [p.relative_to(SRC) for p in SRC.rglob("*.py") if _calls_from_pretrained(p)]
    assert loaders == [Path("weights/hf_model.py")], loaders
    model, tokenizer = load_causal_lm(str(folder), with_tokenizer=True)
    assert model.config.model_type == "gpt2" and tokenizer is not None and not model.training
    from headatlas.errors import WeightSourceError

    with pytest.raises(WeightSourceError) as err:
        load_causal_lm(str(tmp_path / "nothing-here"))
    assert "\n" not in str(err.value)


def _imports(path: Path, package: str) -> set[str]:
    """Modules of headatlas a module imports at its top level (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("headatlas")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}"
            if base.startswith("headatlas"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_no_import_cycles() -> None:
    modules: dict[str, Path] = {}
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules[".".join(parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in modules and m != name}
    # The describe backends belong to issue 14; every other package must be free of cycles.
    skip = "headatlas.describe"
    cycles = []
    for start in graph:
        if start.startswith(skip):
            continue
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(trail)
                elif nxt not in seen and not nxt.startswith(skip):
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, cycles[:3]


def test_corrupt_salient_and_results_tables_are_named(
    bad_inputs: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "r"
    shutil.copytree(bad_inputs["results"], directory)
    (directory / "categories.parquet").write_bytes(b"junk")
    with pytest.raises(ResultsError, match=r"categories\.parquet is unreadable"):
        load_results(directory)
