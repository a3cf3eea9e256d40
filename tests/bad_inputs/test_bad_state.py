"""Bad-input corpus, part 3: damaged state (run folders, bundles, sweep results, caches), unloadable model
folders and Ctrl-C. Each error names the file and what is wrong (exit 2); Ctrl-C exits 130 and says so."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
from _corpus import Case, cases, check, corpus_template, ws  # noqa: F401 (fixtures)

from _stage2 import AttrBackend

FIT = "fit {run} --out {ws}/m"
SCORE = "score {bundle} --input {rows} -o {ws}/r.parquet"
EVAL = "eval {bundle} {run} --seeds 1"
ROUTE = "route {bundle} --user-data {user_table} --out {ws}/ro --seeds 1"
SWEEP = "sweep {run} --grid k=1 --out {results} --jobs 1"


def edit(rel, fn):
    return lambda ws: ws.edit_json(rel, fn)


def tensors(fn):
    return lambda ws: ws.edit_tensors("bundle/model.safetensors", fn)


def pop(key):
    def fn(d):
        d.pop(key)

    return fn


def keys_without(col):
    def setup(ws):
        t = pq.read_table(ws.path("run/keys.parquet"))
        pq.write_table(t.drop_columns([col]), ws.path("run/keys.parquet"))

    return setup


def reversed_pairs(ws):
    t = pq.read_table(ws.path("run/pairs.parquet"))
    pq.write_table(t.take(list(range(t.num_rows))[::-1]), ws.path("run/pairs.parquet"))


def widen(name, axis, by=1):
    def fn(t):
        pad = [(0, 0)] * t[name].ndim
        pad[axis] = (0, by)
        t[name] = np.pad(t[name], pad)

    return fn


def nan_coef(t):
    t["coef"][0, 0] = np.nan


RUN_FOLDERS = [
    Case("run-json-truncated", FIT, r"run/run\.json: damaged run\.json", lambda ws: ws.truncate("run/run.json", 0.4)),
    Case(
        "run-json-not-object",
        FIT,
        r"run\.json: damaged run\.json \(not a JSON object\)",
        lambda ws: ws.write("run/run.json", "[]"),
    ),
    Case(
        "run-json-no-cache-dir", FIT, r"run\.json: field 'cache_dir' is missing", edit("run/run.json", pop("cache_dir"))
    ),
    Case(
        "run-json-bad-fingerprint",
        FIT,
        r"run\.json: field 'fingerprint' is not a dict",
        edit("run/run.json", lambda d: d.update(fingerprint="x")),
    ),
    Case(
        "run-json-bad-dtype",
        FIT,
        r"run\.json: field 'cache_dtype' is 'int8'",
        edit("run/run.json", lambda d: d.update(cache_dtype="int8")),
    ),
    Case(
        "run-keys-missing",
        FIT,
        r"run/keys\.parquet: missing; rerun `micro embed",
        lambda ws: ws.path("run/keys.parquet").unlink(),
    ),
    Case(
        "run-keys-truncated",
        FIT,
        r"run/keys\.parquet: not a readable Parquet file",
        lambda ws: ws.truncate("run/keys.parquet", 0.5),
    ),
    Case("run-keys-no-context", FIT, r"keys\.parquet: column 'context' is missing", keys_without("context")),
    Case(
        "run-pairs-truncated",
        FIT,
        r"run/pairs\.parquet: not a readable Parquet pair table",
        lambda ws: ws.truncate("run/pairs.parquet", 0.5),
    ),
    Case("run-pairs-keys-disagree", FIT, r"run: keys\.parquet and pairs\.parquet disagree", reversed_pairs),
    Case("run-is-a-file", "fit {raw}", r"raw\.jsonl: is a file, not a run folder"),
    Case(
        "run-cache-deleted",
        FIT,
        r"run: \d+ chosen vectors are missing from the cache",
        lambda ws: shutil.rmtree(ws.path("cache")),
    ),
    Case("run-damaged-for-eval", EVAL, r"run\.json: damaged run\.json", lambda ws: ws.truncate("run/run.json", 10)),
    Case("run-damaged-for-sweep", SWEEP, r"keys\.parquet: missing", lambda ws: ws.path("run/keys.parquet").unlink()),
    Case(
        "run-other-embedder",
        EVAL,
        r"run: the bundle was fitted on features of embedder \w+ .* but these features "
        r"come from embedder",
        edit("run/run.json", lambda d: d.update(fingerprint_id="0123456789abcdef")),
    ),
]

BUNDLES = [
    Case(
        "bundle-json-truncated",
        SCORE,
        r"bundle/model\.json: damaged model\.json",
        lambda ws: ws.truncate("bundle/model.json", 0.3),
    ),
    Case(
        "bundle-json-not-object",
        EVAL,
        r"model\.json: damaged model\.json \(not a JSON object\)",
        lambda ws: ws.write("bundle/model.json", '"model"'),
    ),
    Case(
        "bundle-no-params", ROUTE, r"model\.json: field 'params' is missing", edit("bundle/model.json", pop("params"))
    ),
    Case(
        "bundle-no-fitted", SCORE, r"model\.json: field 'fitted' is missing", edit("bundle/model.json", pop("fitted"))
    ),
    Case(
        "bundle-unknown-param",
        SCORE,
        r"model\.json: unknown parameter\(s\) n_heads in 'params'",
        edit("bundle/model.json", lambda d: d["params"].update(n_heads=3)),
    ),
    Case(
        "bundle-bad-param",
        SCORE,
        r"model\.json: bad 'params': The 'n_components' parameter of MixtureBT must be an int in the range \[1, inf\)",
        edit("bundle/model.json", lambda d: d["params"].update(n_components=-1)),
    ),
    Case(
        "bundle-nan-param",
        EVAL,
        r"model\.json: bad 'params': The 'alpha' parameter of MixtureBT must be a float in the range \[0.0, inf\)",
        edit("bundle/model.json", lambda d: d["params"].update(alpha=float("nan"))),
    ),
    Case(
        "bundle-wrong-format",
        SCORE,
        r"model\.json: field 'format' is 'x'",
        edit("bundle/model.json", lambda d: d.update(format="x")),
    ),
    Case(
        "bundle-unknown-class",
        SCORE,
        r"model\.json: unknown model class 'Forest'",
        edit("bundle/model.json", lambda d: d.update({"class": "Forest"})),
    ),
    Case(
        "bundle-tensors-missing",
        SCORE,
        r"model\.safetensors: cannot be read",
        lambda ws: ws.path("bundle/model.safetensors").unlink(),
    ),
    Case(
        "bundle-tensors-truncated",
        ROUTE,
        r"model\.safetensors: cannot be read",
        lambda ws: ws.truncate("bundle/model.safetensors", 0.5),
    ),
    Case("bundle-nan-coef", SCORE, r"model\.safetensors: tensor 'coef' has non-finite values", tensors(nan_coef)),
    Case(
        "bundle-coef-too-wide",
        SCORE,
        r"tensor shapes disagree: coef \(3, 16\) but model\.json says n_features_in_ = 15",
        tensors(widen("coef", 1)),
    ),
    Case(
        "bundle-coef-fit-mismatch",
        EVAL,
        r"tensor shapes disagree: coef_fit \(3, 16\) != \(3, 15\)",
        tensors(widen("coef_fit", 1)),
    ),
    Case(
        "bundle-gate-extra-head",
        SCORE,
        r"tensor shapes disagree: gate\.coef .* do not fit 3 heads",
        tensors(widen("gate.intercept", 0)),
    ),
    Case(
        "bundle-gate-too-wide",
        ROUTE,
        r"tensor shapes disagree: gate\.coef \(3, 17\) does not read 15-dim",
        tensors(widen("gate.coef", 1, 2)),
    ),
    Case("bundle-no-coef", SCORE, r"model\.safetensors: tensor 'coef' is missing", tensors(lambda t: t.pop("coef"))),
    Case(
        "bundle-no-gate",
        SCORE,
        r"tensor shapes disagree: no gate tensors",
        tensors(lambda t: [t.pop(k) for k in list(t) if k.startswith("gate.")]),
    ),
    Case(
        "bundle-heads-vs-params",
        SCORE,
        r"coef has 3 heads but params\.n_components = 5",
        edit("bundle/model.json", lambda d: d["params"].update(n_components=5)),
    ),
    Case(
        "bundle-weights-length",
        SCORE,
        r"fitted\.mixture_weights_ has shape \(2,\), expected \(3,\)",
        edit("bundle/model.json", lambda d: d["fitted"].update(mixture_weights_=[0.5, 0.5])),
    ),
    Case(
        "bundle-gate-kind-mismatch",
        SCORE,
        r"fitted\.gate_kind_ is 'static' but the gate tensors are a 'linear' gate",
        edit("bundle/model.json", lambda d: d["fitted"].update(gate_kind_="static")),
    ),
    Case("bundle-is-a-file", "score {raw} --input {rows}", r"raw\.jsonl: is a file, not a model bundle folder"),
]

SWEEP_RESULTS = [
    Case(
        "sweep-results-garbage",
        SWEEP,
        r"results\.parquet: damaged sweep results file",
        lambda ws: ws.write("sweep/results.parquet", b"garbage"),
    ),
    Case(
        "sweep-results-truncated",
        SWEEP,
        r"results\.parquet: damaged sweep results file",
        lambda ws: ws.truncate("sweep/results.parquet", 0.6),
    ),
    Case(
        "sweep-results-foreign",
        SWEEP,
        r"results\.parquet: not a sweep results file \(no 'config_hash' column\)",
        lambda ws: shutil.copy(ws.path("pairs.parquet"), ws.path("sweep/results.parquet")),
    ),
    Case(
        "sweep-results-bad-type",
        SWEEP,
        r"results\.parquet: column 'config_hash' is Int64",
        lambda ws: (
            __import__("polars")
            .DataFrame({"config_hash": [1], "error": ["x"]})
            .write_parquet(ws.path("sweep/results.parquet"))
        ),
    ),
    Case(
        "sweep-results-is-folder",
        "sweep {run} --grid k=1 --out {ws}/sweep.parquet",
        r"sweep\.parquet: is a folder",
        lambda ws: ws.path("sweep.parquet").mkdir(),
    ),
    Case(
        "k-auto-results-damaged",
        "fit {run} --k auto --k-range 1..2 --out {ws}/m",
        r"k_selection/results\.parquet: "
        r"damaged sweep results file",
        lambda ws: ws.write("m/k_selection/results.parquet", b"PAR1"),
    ),
]


def read_only_cache(ws):
    """Setup: the cache folder read-only; the commands then need texts that are not cached yet."""
    ws.freeze("cache")


CACHES = [
    Case(
        "cache-read-only-embed-new",
        "embed {user_table} --out {ws}/nr --cache-dir {cache}",
        r"the embedding cache .* is read-only: \d+ texts are not cached yet",
        read_only_cache,
        backend=True,
    ),
    Case(
        "cache-read-only-route-new", ROUTE, r"is read-only: \d+ texts are not cached yet", read_only_cache, backend=True
    ),
    Case(
        "cache-read-only-score-new",
        "score {bundle} --input {ws}/new.jsonl -o {ws}/r.parquet --cache-writes",
        r"is read-only: \d+ texts are not cached yet",
        lambda ws: (
            ws.rows("new.jsonl", [{"prompt": "new q", "response": "new answer attrs 1 1 1"}]),
            ws.freeze("cache"),
        ),
        backend=True,
    ),
    Case(
        "cache-read-only-new-embedder",
        "embed {pairs} --out {ws}/nr --cache-dir {ws}/ro --cache-dtype float16",
        r"embedding cache .*/ro/\w+-f16 is read-only",
        lambda ws: (ws.path("ro").mkdir(), ws.freeze("ro")),
        backend=True,
    ),
    Case(
        "cache-dir-under-a-file",
        "embed {pairs} --out {ws}/nr --cache-dir {raw}/c",
        r"--cache-dir .*raw\.jsonl/c: .*raw\.jsonl is a file, not a folder",
    ),
]


# --- model folders: the real sentence-transformers backend ------------------------------------------------------
def model_folder(weights: bytes | None = b"", drop=(), garbage=()):
    """Setup: a copy of the bundled MiniLM folder's small files, with ``weights`` as model.safetensors (None: no
    weights file), files in ``drop`` removed and files in ``garbage`` overwritten with junk."""

    def setup(ws):
        from pathlib import Path

        from pipeline.embed.backends.st import default_model_path

        src, dst = Path(default_model_path()), ws.path("model")
        for p in src.rglob("*"):
            if p.is_file() and p.suffix != ".safetensors":
                (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, dst / p.relative_to(src))
        if weights is not None:
            real = (src / "model.safetensors").read_bytes()
            (dst / "model.safetensors").write_bytes(weights if weights else real[: len(real) // 3])
        for name in drop:
            (dst / name).unlink()
        for name in garbage:
            (dst / name).write_text("{ not json")

    return setup


M = "embed {pairs} --out {ws}/nr --cache-dir {ws}/mc --model {ws}/model"
MODELS = [
    Case(
        "model-not-local",
        "embed {pairs} --out {ws}/nr --model org/some-model",
        r"model 'org/some-model' is not a local path.*huggingface-cli download org/some-model",
        real_backend=True,
    ),
    Case(
        "model-is-a-file",
        "embed {pairs} --out {ws}/nr --model {raw}",
        r"--model .*raw\.jsonl: is a file",
        real_backend=True,
    ),
    Case(
        "model-empty-folder",
        M,
        r"--model .*/model: the model folder is empty",
        lambda ws: ws.path("model").mkdir(),
        real_backend=True,
    ),
    Case(
        "model-no-tokenizer",
        M,
        r"--model .*/model: no tokenizer\.json",
        model_folder(drop=("tokenizer.json",)),
        real_backend=True,
    ),
    Case("model-no-weights", M, r"--model .*/model: no weights file", model_folder(weights=None), real_backend=True),
    Case(
        "model-garbage-config",
        M,
        r"cannot load the model in .*/model: JSONDecodeError",
        model_folder(garbage=("config.json",)),
        real_backend=True,
    ),
    Case(
        "model-garbage-weights",
        M,
        r"cannot load the model in .*/model: \w+",
        model_folder(b"\x00garbage" * 64),
        real_backend=True,
    ),
    Case("model-truncated-weights", M, r"cannot load the model in .*/model: \w+", model_folder(), real_backend=True),
    Case(
        "model-garbage-tokenizer",
        M,
        r"cannot load the model in .*/model: \w+",
        model_folder(garbage=("tokenizer.json",)),
        real_backend=True,
    ),
    Case(
        "model-max-length-beyond-positions",
        "embed {pairs} --out {ws}/nr --max-length 100000",
        r"--max-length 100000 is beyond the 512 positions of the model",
        real_backend=True,
    ),
    Case(
        "model-transformers-garbage",
        "embed {pairs} --out {ws}/nr --backend transformers --model {ws}/model",
        r"cannot load model from .*/model' with transformers",
        model_folder(garbage=("config.json",)),
        real_backend=True,
    ),
    Case(
        "model-transformers-workers-garbage",
        "embed {pairs} --out {ws}/nr --backend transformers --workers 2 --model {ws}/model",
        r"cannot load model from .*/model' with transformers",
        model_folder(garbage=("config.json",)),
        real_backend=True,
    ),
    Case(
        "model-transformers-garbage-tokenizer",
        "embed {pairs} --out {ws}/nr --backend transformers --model {ws}/model",
        r"cannot load model from .*/model' with transformers",
        model_folder(garbage=("tokenizer.json",)),
        real_backend=True,
    ),
    Case(
        "model-transformers-workers-garbage-tokenizer",
        "embed {pairs} --out {ws}/nr --backend transformers --workers 2 --model {ws}/model",
        r"cannot load model from .*/model' with transformers",
        model_folder(garbage=("tokenizer.json",)),
        real_backend=True,
    ),
    Case(
        "model-vllm-garbage",
        "embed {pairs} --out {ws}/nr --backend vllm --model {ws}/model",
        r"cannot load model from .*/model' with vllm",
        model_folder(garbage=("config.json",)),
        real_backend=True,
    ),
]


# --- Ctrl-C -----------------------------------------------------------------------------------------------------
class InterruptedBackend(AttrBackend):
    """Embeds one chunk, then the user presses Ctrl-C."""

    chunk_size = 8

    def embed(self, inputs):
        if self.calls:
            raise KeyboardInterrupt
        return super().embed(inputs)


def interrupt(target: str, attr: str):
    def setup(ws):
        import importlib

        def boom(*a, **k):
            raise KeyboardInterrupt

        ws.mp.setattr(importlib.import_module(target), attr, boom)

    return setup


def interrupted_embed(ws):
    import pipeline.embed.backends

    ws.mp.setattr(pipeline.embed.backends, "get_backend", lambda *a, **k: InterruptedBackend())


CTRL_C = [
    Case(
        "ctrl-c-embed",
        "embed {user_table} --out {ws}/nr --cache-dir {ws}/newcache",
        r"interrupted: 8 new texts were saved to the cache; rerun the same command to resume",
        interrupted_embed,
        code=130,
        real_backend=True,
    ),
    Case("ctrl-c-fit", FIT, r"^interrupted$", interrupt("pipeline.fit.fit", "fit_run"), code=130),
    Case("ctrl-c-sweep", SWEEP, r"^interrupted$", interrupt("pipeline.sweep.command", "run_sweep"), code=130),
    Case("ctrl-c-eval", EVAL, r"^interrupted$", interrupt("pipeline.evaluate.evaluate", "evaluate"), code=130),
]


@cases(*RUN_FOLDERS, *BUNDLES, *SWEEP_RESULTS, *CACHES, *MODELS, *CTRL_C)
def test_bad_state(case, ws, monkeypatch, capsys):
    check(case, ws, monkeypatch, capsys)


def test_ctrl_c_embed_resumes_with_the_rest(ws, monkeypatch, capsys):
    """After the Ctrl-C above, a rerun embeds exactly the texts that were not saved."""
    from _corpus import run_cli

    from _stage2 import patch_backend

    interrupted_embed(ws)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "embed",
        ws.path("user.parquet"),
        "--out",
        ws.path("nr"),
        "--cache-dir",
        ws.path("newcache"),
    )
    assert code == 130 and "8 new texts were saved" in err
    built = patch_backend(monkeypatch)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "embed",
        ws.path("user.parquet"),
        "--out",
        ws.path("nr"),
        "--cache-dir",
        ws.path("newcache"),
    )
    assert code == 0, err
    total = int(json.loads(ws.path("nr/run.json").read_text())["summary"]["unique_texts"])
    assert len(built[0].embedded) == total - 8 and "cache hits 8" in err
