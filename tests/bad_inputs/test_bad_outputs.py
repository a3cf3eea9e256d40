"""Bad-input corpus, part 4: output paths that cannot be written (a file where a folder is expected and the other
way round, a parent that is a file, a read-only folder, a full disk). One line naming the path, exit 2, and the
earlier output at that path (if any) untouched."""

from __future__ import annotations

import errno
import os

from _corpus import Case, cases, check, corpus_template, ws  # noqa: F401 (fixtures)


def folder(rel):
    return lambda ws: ws.path(rel).mkdir(parents=True)


def read_only(rel):
    def setup(ws):
        ws.path(rel).mkdir(parents=True, exist_ok=True)
        ws.freeze(rel)

    return setup


def disk_full(ws):
    """Every fsync fails as on a full disk (the write itself went to the page cache)."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ws.mp.setattr(os, "fsync", fsync)


RO = r"cannot write in .*/ro \((Permission denied|Operation not permitted|Read-only file system)\)"
FULL = r"No space left on device"

OUTPUTS = [
    Case("embed-out-is-a-file", "embed {pairs} --out {raw}", r"--out .*raw\.jsonl: is a file, not a folder"),
    Case("embed-out-under-a-file", "embed {pairs} --out {raw}/run", r"--out .*raw\.jsonl/run: .*raw\.jsonl is a file"),
    Case("embed-out-read-only", "embed {pairs} --out {ws}/ro/run", RO, read_only("ro")),
    Case(
        "embed-disk-full",
        "embed {user_table} --out {ws}/nr --cache-dir {cache}",
        r"cannot write .*/shards/part-\w+\.parquet: " + FULL,
        disk_full,
        backend=True,
    ),
    Case("fit-out-is-a-file", "fit {run} --out {raw}", r"--out .*raw\.jsonl: is a file, not a folder"),
    Case("fit-out-read-only", "fit {run} --out {ws}/ro/model", RO, read_only("ro")),
    Case(
        "fit-over-bundle-disk-full",
        "fit {run} --out {bundle} --n-init 1 --max-iter 5 --quiet",
        r"cannot write .*bundle/model\.safetensors: " + FULL,
        disk_full,
    ),
    Case("route-out-is-a-file", "route {bundle} --user-data {user} --out {raw}", r"--out .*raw\.jsonl: is a file"),
    Case(
        "route-online-out-read-only",
        "route {bundle} --user-data {user} --online --user g1 --out {ws}/ro",
        RO,
        read_only("ro"),
    ),
    Case(
        "score-out-is-a-folder",
        "score {bundle} --input {rows} -o {ws}/out.parquet",
        r"--out .*out\.parquet: is a folder, not a file",
        folder("out.parquet"),
    ),
    Case(
        "score-out-under-a-file",
        "score {bundle} --input {rows} -o {raw}/r.parquet",
        r"--out .*raw\.jsonl/r\.parquet: .*raw\.jsonl is a file, not a folder",
    ),
    Case("score-out-read-only", "score {bundle} --input {rows} -o {ws}/ro/r.jsonl", RO, read_only("ro")),
    Case(
        "score-over-rewards-disk-full",
        "score {bundle} --input {rows} -o {rewards}",
        r"cannot write .*/rewards\.parquet: " + FULL,
        disk_full,
        backend=True,
    ),
    Case(
        "prepare-out-is-a-folder",
        "data prepare generic {raw} -o {ws}/t.parquet",
        r"t\.parquet: is a folder",
        folder("t.parquet"),
    ),
    Case("prepare-out-under-a-file", "data prepare generic {raw} -o {raw}/t.parquet", r"raw\.jsonl is a file"),
    Case("prepare-out-read-only", "data prepare generic {raw} -o {ws}/ro/t.parquet", RO, read_only("ro")),
    Case(
        "prepare-over-table-disk-full",
        "data prepare generic {raw} -o {pairs}",
        r"cannot write .*pairs\.parquet: " + FULL,
        disk_full,
    ),
    Case("eval-report-is-a-file", "eval {bundle} {run} --report {raw}", r"--report .*raw\.jsonl: is a file"),
    Case("sweep-out-under-a-file", "sweep {run} --grid k=1 --out {raw}/s.parquet", r"raw\.jsonl is a file"),
    Case("sweep-out-read-only", "sweep {run} --grid k=1 --out {ws}/ro/s.parquet", RO, read_only("ro")),
    Case("demo-out-read-only", "demo --out {ws}/ro/demo", RO, read_only("ro")),
]


@cases(*OUTPUTS)
def test_bad_output(case, ws, monkeypatch, capsys):
    check(case, ws, monkeypatch, capsys)
