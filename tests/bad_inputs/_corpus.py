"""The bad-input corpus: a workspace of valid inputs and outputs, and the checks every case must pass.

A :class:`Case` is a command line (``{name}`` placeholders are workspace paths), an optional ``setup`` that
damages the workspace (writes a bad file, tampers with a bundle, makes a folder read-only, ...) and a regex the
error line must match (it names the file / row / field or the option). :func:`check` runs the command
in-process through ``cli.main`` (no model: the embedder is ``AttrBackend`` from tests/_stage2.py unless a case
needs the real one) and asserts, for every case:

* the exit code (2; 130 for Ctrl-C) and no traceback anywhere in the output;
* exactly one ``error: ...`` line, the last line of stderr, matching the case's regex;
* no backend was built (option values and inputs are checked before any model is loaded), unless the case says
  the error can only be found with the backend in hand;
* nothing valid was dropped or overwritten: every file of the workspace before the command is still there,
  byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from _stage2 import make_bundle, patch_backend, run_cli, synthetic_rows, write_jsonl, write_table
from conftest import ReadOnly


@dataclass
class Case:
    """One bad input: see the module docstring."""

    id: str
    args: str
    expect: str
    setup: Callable | None = None
    code: int = 2
    backend: bool = False  # the error may be found after a backend was built
    real_backend: bool = False  # use the real get_backend (model-folder cases)

    def __str__(self) -> str:
        return self.id


def cases(*items: Case):
    """pytest parameters of the cases, with their ids."""
    ids = [c.id for c in items]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return pytest.mark.parametrize("case", items, ids=ids)


# ------------------------------------------------------------------------------------------- the workspace
def build_template(root: Path) -> None:
    """Valid inputs and outputs of every stage (synthetic data, AttrBackend, no model)."""
    from pipeline.route.profiles import build_profile

    rows = synthetic_rows(n_per_group=24, topic=True, seed=1)
    write_table(rows, root / "pairs.parquet")
    make_bundle(root, rows, gate_input="prompt", name="bundle", n_init=1, max_iter=20)
    make_bundle(root, rows, gate_input="context", name="cbundle", n_init=1, max_iter=20)
    shutil.move(root / "bundle_run", root / "run")
    user = synthetic_rows(n_per_group=12, seed=2, prefix="u")
    write_jsonl(user, root / "user.jsonl")
    write_table(user, root / "user.parquet")
    write_jsonl(
        [
            {"prompt": "question a", "response": "answer attrs 1 0 0"},
            {"prompt": "question b", "response": "answer attrs 0 1 0"},
        ],
        root / "rows.jsonl",
    )
    write_jsonl(
        [
            {"prompt": "q one", "chosen": "good one", "rejected": "bad one", "group": "g0"},
            {"prompt": "q two", "chosen": "good two", "rejected": "bad two", "group": "g1"},
        ],
        root / "raw.jsonl",
    )
    with pytest.MonkeyPatch.context() as mp:
        from pipeline.route.score import score_file

        patch_backend(mp)
        build_profile(root / "bundle", root / "user.parquet", "g1", root / "profiles", log=lambda m: None)
        score_file(root / "bundle", root / "rows.jsonl", root / "rewards.parquet", cache_writes=True)
    shutil.rmtree(root / "profiles" / "work")  # keep the workspace small
    sweep = root / "sweep"
    sweep.mkdir()
    import polars as pl

    pl.DataFrame(
        {"config_hash": ["abc"], "trial": [0], "k": [2], "seed": [0], "error": [None]},
        schema={"config_hash": pl.Utf8, "trial": pl.Int64, "k": pl.Int64, "seed": pl.Int64, "error": pl.Utf8},
    ).write_parquet(sweep / "results.parquet")


class Workspace:
    """A per-test copy of the template (absolute paths inside JSON files rewritten to the copy)."""

    NAMES = {
        "pairs": "pairs.parquet",
        "run": "run",
        "bundle": "bundle",
        "cbundle": "cbundle",
        "cache": "cache",
        "user": "user.jsonl",
        "user_table": "user.parquet",
        "rows": "rows.jsonl",
        "raw": "raw.jsonl",
        "profile": "profiles/g1.json",
        "results": "sweep/results.parquet",
        "rewards": "rewards.parquet",
        "ws": ".",
    }

    def __init__(self, template: Path, root: Path, monkeypatch):
        shutil.copytree(template, root, symlinks=True)
        for p in root.rglob("*.json"):
            text = p.read_text()
            if str(template) in text:
                p.write_text(text.replace(str(template), str(root)))
        self.root, self.mp = root, monkeypatch
        self.read_only = ReadOnly()

    @property
    def paths(self) -> dict:
        return {k: str((self.root / v).resolve()) for k, v in self.NAMES.items()}

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, content: str | bytes) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        return p

    def rows(self, rel: str, rows: list[dict]) -> Path:
        return self.write(rel, "".join(json.dumps(r) + "\n" for r in rows))

    def truncate(self, rel: str, keep: int | float = 0.5) -> None:
        p = self.root / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])

    def edit_json(self, rel: str, fn: Callable[[dict], object]) -> None:
        p = self.root / rel
        data = json.loads(p.read_text())
        out = fn(data)
        p.write_text(json.dumps(data if out is None else out))

    def edit_tensors(self, rel: str, fn: Callable[[dict], object]) -> None:
        from safetensors.numpy import load_file, save_file

        p = self.root / rel
        t = load_file(str(p))
        fn(t)
        save_file(t, str(p))

    def freeze(self, rel: str = ".") -> Path:
        """Make ``rel`` (recursively) read-only until the end of the test (see conftest.ReadOnly)."""
        return self.read_only(self.root / rel)


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (and the shard lists of cache manifests)."""
    for p in root.rglob("manifest.json"):
        try:
            _MANIFESTS[p] = {s["file"] for s in json.loads(p.read_text())["shards"]}
        except (ValueError, KeyError, TypeError):
            _MANIFESTS.pop(p, None)  # a damaged manifest may only be rebuilt, not shrink what it listed
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check(case: Case, ws: Workspace, monkeypatch, capsys) -> str:
    """Run ``case`` in ``ws`` and assert the corpus properties; returns the error line."""
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws.root)
    built = [] if case.real_backend else patch_backend(monkeypatch)
    args = shlex.split(case.args.format(**ws.paths))
    capsys.readouterr()
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert "Traceback" not in out + err, err
    assert code == case.code, f"exit code {code}, stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no message"
    if case.code == 130:
        assert "interrupted" in lines[-1] and not any(ln.startswith("error:") for ln in lines), err
        last = lines[-1]
    else:
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"expected one final error line, got:\n{err}"
        last = errors[0]
    assert re.search(case.expect, last), f"{last!r} does not match {case.expect!r}"
    if not case.backend:
        assert not built, "a backend was built before the error was found"
    after = snapshot(ws.root)
    changed = sorted(k for k, h in before.items() if after.get(k) != h and not grown_manifest(ws.root / k, k in after))
    assert not changed, f"valid files dropped or overwritten: {changed}"
    return last


def grown_manifest(path: Path, exists: bool) -> bool:
    """A cache manifest may be rewritten when texts are added (route/score embed what is missing), but must
    still list every shard (and so every vector) it listed before."""
    return exists and path.name == "manifest.json" and "cache" in path.parts and _shards_kept(path)


_MANIFESTS: dict = {}


def _shards_kept(path: Path) -> bool:
    before = _MANIFESTS.get(path)
    now = {s["file"] for s in json.loads(path.read_text())["shards"]}
    return before is not None and before <= now


@pytest.fixture(scope="session")
def corpus_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "template"
    root.mkdir()
    build_template(root)
    return root


@pytest.fixture
def ws(corpus_template, tmp_path, monkeypatch):
    import pipeline.embed.embed

    w = Workspace(corpus_template, tmp_path / "ws", monkeypatch)
    monkeypatch.setattr(pipeline.embed.embed, "DEFAULT_CACHE", tmp_path / "default_cache")  # never the user's cache
    yield w
    w.read_only.undo()
