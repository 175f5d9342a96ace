"""Results on disk: one folder per model holding parquet tables and a JSON manifest.

Layout of ``OUT/<model-slug>/``::

    manifest.json        model (name, display_name, source, fingerprint, architecture, shape),
                         recipe (its switches and label), options (every other switch),
                         relations (name, category, n_pairs, k, skipped reason),
                         package versions, timings, files (name -> sha256, rows: what the
                         manifest vouches for)
    scores.parquet       model, layer, head, relation, category, k, n_pairs, score,
                         suppression_score, null_mean, null_max, p_value, z
    evidence.parquet     pairs behind each score >= threshold (EVIDENCE_COLUMNS)
    categories.parquet   layer, head, label, categories, n_relations, relations
    salient.parquet      salient operations (``headatlas salient --all``)
    qk_scores.parquet    static QK scores per head (``headatlas map --qk``, docs/qk.md)
    descriptions.jsonl   LLM descriptions of heads (``headatlas describe``)
    validation/          inference-time checks (``headatlas validate``)

Every write goes to a temporary file in the same folder and is renamed into place, so a file is
either the old version or the new one, never half-written.

The manifest vouches for the files beside it: its ``files`` section maps each file name to its
content hash and row count (``{"scores.parquet": {"sha256": ..., "rows": ...}}``). Writers put
their tables first and the manifest last (:func:`write_manifest`), so a failure in between
leaves a manifest that no longer matches; every reader checks the match through one function,
:func:`check_files`. A new table registers by being named in ``write_manifest(files=...)``.
A manifest without a ``files`` section (written before file hashes) is unverified: ``map``
recomputes it, readers accept it with a warning.

The recipe is recorded once, in the ``recipe`` section (:func:`manifest_recipe` reads it).
Manifests written before MapOptions held a Recipe also list the recipe's switches among their
``options`` (the oldest have no ``recipe`` section at all); they read the same.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from headatlas.errors import HeadAtlasError, ResultsError, ResultsMismatchError
from headatlas.scoring.options import recipe_with
from headatlas.scoring.recipe import Recipe

MANIFEST = "manifest.json"
SCORES = "scores.parquet"
CATEGORIES = "categories.parquet"
SALIENT = "salient.parquet"
QK_SCORES = "qk_scores.parquet"
QK_COLUMNS = ("model", "layer", "head", "dup_score", "salient_keys", "salient_queries")
"""Columns of qk_scores.parquet (salient_*: token ids, best first)."""
QK_EXTRA_COLUMNS = ("dup_mass",)
"""Further per-head columns of qk_scores.parquet (maps from before them lack them)."""
QK_CLASS_COLUMNS = ("classes", "class_auc", "class_null_mean", "class_null_max", "class_p_value",
                    "class_z")  # fmt: skip
"""Key preference per token class in qk_scores.parquet (maps from before it lack them): the
class names and, aligned with them, the AUC and its null from random classes of equal size."""
DESCRIPTIONS = "descriptions.jsonl"
FILES = "files"
"""The manifest section that vouches for the files beside it."""
SCORE_COLUMNS = (
    "model",
    "layer",
    "head",
    "relation",
    "category",
    "k",
    "n_pairs",
    "score",
    "suppression_score",
)
"""Columns of scores.parquet every reader needs (maps since the null also hold
``headatlas.scoring.null.NULL_COLUMNS``)."""
EVIDENCE = "evidence.parquet"
EVIDENCE_COLUMNS = (
    "model",
    "layer",
    "head",
    "relation",
    "source",
    "target",
    "correct",
    "target_rank",
    "top_tokens",
    "kind",
)
"""Columns of evidence.parquet (see :mod:`headatlas.scoring.evidence`)."""
WRITERS = {
    SCORES: "headatlas map",
    CATEGORIES: "headatlas map",
    SALIENT: "headatlas salient --all",
    EVIDENCE: "headatlas map",
    QK_SCORES: "headatlas map --qk",
}
"""The command that rewrites each file (for error messages)."""


def model_slug(name: str) -> str:
    """A file-system-safe folder name for a model name, hub id or path, one per source: a
    local path keeps its last part and gains a hash of its full resolved path, so
    ``runs/a/final`` and ``runs/b/final`` never share a results folder."""
    base = name.rstrip("/\\")
    if os.path.exists(name):
        where = str(Path(name).expanduser().resolve())
        tag = hashlib.sha256(where.encode()).hexdigest()[:8]
        last = re.split(r"[/\\]", base)[-1] or "model"
        base = f"{last}-{tag}"
    else:
        base = base.replace("/", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")
    return slug or "model"


def results_folder(out: str | Path, name: str) -> Path:
    """``out/<model-slug>/``, created now, so an unusable output path is named before any
    work is done."""
    directory = create_folder(Path(out) / model_slug(name), "the results folder", "--out")
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # no statvfs (Windows): writes say it when they fail
        return directory
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        raise ResultsError(
            f"cannot write to {directory} (no space left on the device, "
            f"{st.f_bavail * st.f_frsize // 1024} KiB free): free space on that disk or choose "
            "another --out"
        )
    return directory


def create_folder(path: Path, what: str, option: str) -> Path:
    """Create ``path`` (``what``, chosen by ``option``), naming a file on the way or the
    system's reason and the fix in a ResultsError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = file_on_path(path)
        if blocker is not None:
            raise ResultsError(
                f"cannot create {what} {path}: {blocker} is a file, not a folder; choose "
                f"another {option}"
            ) from exc
        raise ResultsError(
            f"cannot create {what} {path} ({_reason(exc)}): "
            f"{_fix(exc, f'choose a writable {option} folder')}"
        ) from exc
    return path


MIN_FREE_BYTES = 8 * 1024
"""Less free space than this where results go stops a command before it starts its work."""


def file_on_path(path: Path) -> Path | None:
    """The first part of ``path`` that exists and is not a folder (None when there is none)."""
    for part in (*reversed(path.parents), path):
        if part.exists() and not part.is_dir():
            return part
    return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error is, or was raised while handling, the device running out of space
    (or quota): a writer's clean-up may fail after the write did (matplotlib's PDF)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    if is_disk_full(exc):
        return "no space left on the device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _fix(exc: BaseException, otherwise: str) -> str:
    return "free space on that disk or choose another --out" if is_disk_full(exc) else otherwise


def write_error(path: Path, exc: BaseException) -> ResultsError:
    """The one-line error for a failed write of ``path`` (a full disk says so)."""
    return ResultsError(
        f"cannot write {path} ({_reason(exc)}): {_fix(exc, 'choose a writable output folder')}"
    )


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block
    ends without error, removed otherwise (so a full disk leaves the old file or none, never
    a cut-short one). Write errors become a ResultsError naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        blocker = file_on_path(path.parent)
        if blocker is not None:
            raise ResultsError(
                f"cannot write {path}: {blocker} is a file, not a folder; choose another "
                "output path"
            ) from exc
        raise write_error(path, exc) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except ResultsError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or is_disk_full(exc):
            raise write_error(path, exc) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_atomic_path = atomic_path


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame as parquet, atomically."""
    with _atomic_path(Path(path)) as tmp:
        df.to_parquet(tmp, index=False)


def write_text_atomic(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a results folder, its shape checked, or a ResultsError saying what is
    missing or wrong."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ResultsError(
            f"results folder {directory} does not exist: run `headatlas map` first, "
            "or pass the folder that holds manifest.json"
        )
    if not path.is_file():
        raise ResultsError(
            f"{directory} holds no {MANIFEST}: pass a model's results folder "
            "(OUT/<model-slug>/ as written by `headatlas map`)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} is not valid JSON ({exc}): re-run `headatlas map`") from exc
    problem = _manifest_problem(data)
    if problem:
        raise ResultsError(
            f"{path} is not a headatlas manifest ({problem}): re-run `headatlas map`"
        )
    return dict(data)


def _manifest_problem(data: Any) -> str | None:
    """What is wrong with a parsed manifest's shape (None when nothing is)."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__ if data is not None else 'null'}, not an object"
    model = data.get("model")
    if not isinstance(model, dict):
        return "no 'model' section"
    for key in ("n_layers", "n_heads"):
        value = model.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"model.{key} is {value!r}, not a whole number >= 1"
    for key in ("relations",):
        if key in data and not (
            isinstance(data[key], list) and all(isinstance(r, dict) for r in data[key])
        ):
            return f"'{key}' is not a list of objects"
    files = data.get(FILES)
    if files is not None:
        if not isinstance(files, dict):
            return f"'{FILES}' is not an object"
        for name, rec in files.items():
            if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
                return f"'{FILES}.{name}' has no sha256"
    return None


def file_record(path: Path) -> dict[str, Any]:
    """What a manifest records of one file: its content hash and row count (parquet rows,
    text lines; None for other files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    rows: int | None = None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = int(pq.ParquetFile(path).metadata.num_rows)
    elif path.suffix in (".jsonl", ".csv", ".txt"):
        with open(path, "rb") as f:
            rows = sum(1 for _ in f)
    return {"sha256": h.hexdigest(), "rows": rows}


def write_manifest(
    directory: str | Path, manifest: dict[str, Any], files: Sequence[str] = ()
) -> dict[str, Any]:
    """Write ``directory/manifest.json`` last and atomically, vouching for ``files`` (names
    of files already written beside it) and keeping what it vouched for before for the rest.
    Returns the manifest written."""
    directory = Path(directory)
    vouched = {}
    for name, rec in dict(manifest.get(FILES) or {}).items():
        # An entry kept from before stays only while its file is still the one it vouched
        # for (else a stale entry would refuse the folder after every later run).
        try:
            if name not in files and file_record(directory / name) == rec:
                vouched[name] = rec
        except Exception:  # missing or unreadable: no longer vouched for
            continue
    for name in files:
        try:
            vouched[name] = file_record(directory / name)
        except OSError as exc:
            raise ResultsError(
                f"cannot read back {directory / name} ({_reason(exc)}): re-run the command"
            ) from exc
    manifest = {**manifest, FILES: vouched}
    write_json_atomic(manifest, directory / MANIFEST)
    return manifest


def check_files(
    directory: str | Path,
    manifest: dict[str, Any],
    names: Sequence[str] | None = None,
    require: Sequence[str] = (),
) -> bool:
    """The one check every reader makes: each file the manifest vouches for (or each of
    ``names`` it vouches for) is present with the recorded hash and rows, and each of
    ``require`` is vouched for. Raises a ResultsMismatchError naming the first that is not;
    returns False when the manifest vouches for nothing (an old one without file hashes:
    unverified), True otherwise."""
    directory = Path(directory)
    vouched = manifest.get(FILES)
    if not isinstance(vouched, dict):
        return False
    for name in require:
        if name not in vouched:
            raise ResultsMismatchError(
                f"{directory / name} is not vouched for by {directory / MANIFEST} (written by "
                f"another run): re-run `{WRITERS.get(name, 'the command that wrote it')}`"
            )
    for name, rec in vouched.items():
        if names is not None and name not in names:
            continue
        path = directory / name
        rerun = f"re-run `{WRITERS.get(name, 'the command that wrote it')}`"
        if not path.is_file():
            raise ResultsMismatchError(
                f"{path} is missing but the manifest vouches for it: {rerun}"
            )
        try:
            now = file_record(path)
        except Exception as exc:  # unreadable parquet footer, permissions...
            raise ResultsMismatchError(f"{path} is unreadable ({_reason(exc)}): {rerun}") from exc
        if now["sha256"] != rec.get("sha256") or (
            rec.get("rows") is not None and now["rows"] != rec.get("rows")
        ):
            raise ResultsMismatchError(
                f"{path} is not the file its manifest vouches for (changed or replaced after "
                f"the run, or a run cut short): {rerun} to recompute it"
            )
    return True


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    print(f"headatlas: warning: {message}", file=sys.stderr)


def read_table(path: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A parquet results file, or a ResultsError naming it when it is unreadable or lacks
    ``columns`` (a file cut short, overwritten or from another tool)."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise ResultsError(f"{path} does not exist: re-run the command that writes it") from exc
    except Exception as exc:  # pyarrow raises many types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(
            f"{path} is unreadable ({first}): delete it and re-run the command that wrote it"
        ) from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultsError(
            f"{path} lacks column(s) {', '.join(missing)}: delete it and re-run the command "
            "that wrote it"
        )
    return df


def read_evidence(path: Path) -> pd.DataFrame:
    """An evidence table (:data:`EVIDENCE_COLUMNS`) with ``top_tokens`` as lists of str, as
    the map makes them (parquet gives arrays back)."""
    df = read_table(path, EVIDENCE_COLUMNS)
    df["top_tokens"] = [[str(t) for t in tops] for tops in df["top_tokens"]]
    return df


class LayerCache:
    """Per-layer results of an unfinished run, each saved as its layer finishes so an
    interrupted run resumes: ``root/<key>/<kind>_<layer>-<digest>[-<tag>].parquet``.

    ``key`` hashes what every layer's result depends on besides the layer's own tensors (the
    shared weights, options, inputs); ``digest`` is the layer's weight hash, so a file is found
    only for the same inputs and the same layer weights and nothing stale is reused. A file
    that cannot be read is reported, removed and recomputed. ``root`` None: nothing is kept
    (a run without an output folder). Callers remove the store (:meth:`clear`) once the
    final files are written.
    """

    def __init__(
        self, root: Path | None, key: str, say: Callable[[str], Any] | None = None
    ) -> None:
        self.root = root
        self.key = key
        self.say = say or warn

    def path(self, layer: int, digest: str, kind: str = "layer", tag: str = "") -> Path | None:
        """Where ``kind``'s result for this layer goes (None without a root)."""
        if self.root is None:
            return None
        suffix = f"-{tag}" if tag else ""
        return self.root / self.key / f"{kind}_{layer:04d}-{digest}{suffix}.parquet"

    def get(
        self,
        layer: int,
        digest: str,
        columns: Sequence[str] = (),
        kind: str = "layer",
        tag: str = "",
        read: Callable[[Path], pd.DataFrame] | None = None,
    ) -> pd.DataFrame | None:
        """The saved result (read by ``read``, default :func:`read_table` with ``columns``),
        or None when there is none or it is unreadable (then the file is removed)."""
        path = self.path(layer, digest, kind, tag)
        if path is None or not path.is_file():
            return None
        try:
            return read(path) if read is not None else read_table(path, columns)
        except ResultsError as exc:
            self.say(f"recomputing layer {layer}: {exc}")
            path.unlink(missing_ok=True)
            return None

    def put(
        self, layer: int, digest: str, frame: pd.DataFrame, kind: str = "layer", tag: str = ""
    ) -> None:
        """Save one layer's result (atomically; nothing without a root)."""
        path = self.path(layer, digest, kind, tag)
        if path is not None:
            write_parquet_atomic(frame, path)

    def clear(self) -> None:
        """Remove the whole store (every key's files): the run's final files are written."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def manifest_recipe(manifest: Mapping[str, Any]) -> Recipe | None:
    """The recipe a map was computed with: its manifest's ``recipe`` section, or for a
    manifest from before that section, the recipe switches among its ``options``; None when
    neither names a recipe this version can read."""
    recorded, options = manifest.get("recipe"), manifest.get("options")
    try:
        if isinstance(recorded, Mapping):
            return Recipe.from_dict(recorded)
        if isinstance(options, Mapping):
            return recipe_with(Recipe(), options)
    except (HeadAtlasError, TypeError):
        return None
    return None


@dataclass
class MapResults:
    """The map of one model: scores per (layer, head, relation) and a label per head."""

    directory: Path
    manifest: dict[str, Any]
    scores: pd.DataFrame
    categories: pd.DataFrame
    evidence: pd.DataFrame | None = None
    """The pairs behind each score >= threshold (None: a map from before evidence)."""

    @property
    def display_name(self) -> str:
        """The model's name for titles."""
        model = self.manifest.get("model", {})
        return str(model.get("display_name") or model.get("name") or self.directory.name)

    @property
    def recipe(self) -> Recipe | None:
        """The recipe the map was computed with (None: a manifest that names none)."""
        return manifest_recipe(self.manifest)

    @property
    def n_layers(self) -> int:
        """Number of layers of the model."""
        return int(self.manifest["model"]["n_layers"])

    @property
    def n_heads(self) -> int:
        """Number of query heads per layer."""
        return int(self.manifest["model"]["n_heads"])

    def salient(self) -> pd.DataFrame | None:
        """Salient operations stored beside the map, if any."""
        path = self.directory / SALIENT
        return read_table(path) if path.is_file() else None

    def qk(self) -> pd.DataFrame | None:
        """Static QK scores stored beside the map (``map --qk``), if any."""
        path = self.directory / QK_SCORES
        return read_table(path, QK_COLUMNS) if path.is_file() else None

    def descriptions(self) -> list[dict[str, Any]]:
        """LLM descriptions stored beside the map (may be empty); lines that are not JSON
        objects (one cut short by a hard kill, or another tool's) are left out."""
        path = self.directory / DESCRIPTIONS
        if not path.is_file():
            return []
        records = []
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(
                f"{path} is unreadable ({_reason(exc)}): delete it and re-run `headatlas describe`"
            ) from exc
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a hard kill; re-run describe
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


def load_results(directory: str | Path) -> MapResults:
    """Read a results folder written by ``headatlas map``, checked against its manifest (the
    files' hashes and rows, the relation set); an old manifest without file hashes is read
    with a warning."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    missing = [n for n in (SCORES, CATEGORIES) if not (directory / n).is_file()]
    if missing:
        raise ResultsError(
            f"{directory} lacks {', '.join(missing)}: the map did not finish; "
            "re-run `headatlas map` (finished layers are reused)"
        )
    if not check_files(directory, manifest, require=(SCORES, CATEGORIES)):
        warn(
            f"{directory / MANIFEST} vouches for no file (written before file hashes): its "
            "tables are unverified; re-run `headatlas map` to vouch for them"
        )
    scores = read_table(directory / SCORES, SCORE_COLUMNS)
    check_relation_set(directory, manifest, scores)
    return MapResults(
        directory=directory,
        manifest=manifest,
        scores=scores,
        categories=read_table(directory / CATEGORIES, ("layer", "head", "label")),
        evidence=read_evidence(directory / EVIDENCE) if (directory / EVIDENCE).is_file() else None,
    )


def check_relation_set(directory: Path, manifest: dict[str, Any], scores: pd.DataFrame) -> None:
    """The relations in ``scores`` are the ones the manifest says were scored (those not
    skipped); a ResultsMismatchError names the difference."""
    listed = manifest.get("relations")
    if not isinstance(listed, list):
        return
    want = {str(r.get("name")) for r in listed if not r.get("skipped")}
    have = set(scores["relation"].astype(str).unique())
    if want != have:
        extra, lost = sorted(have - want), sorted(want - have)
        parts = ([f"not in the manifest: {', '.join(extra[:5])}"] if extra else []) + (
            [f"missing: {', '.join(lost[:5])}"] if lost else []
        )
        raise ResultsMismatchError(
            f"{directory / SCORES} does not hold the relations its manifest lists "
            f"({'; '.join(parts)}): re-run `headatlas map` to recompute it"
        )
