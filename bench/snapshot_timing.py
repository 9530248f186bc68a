"""Maildir snapshot timings in-process, without a server: where issue 6's login time goes.

Works on hard-linked copies (``cp -al``) of the corpus' ``huge`` and ``keep`` Maildirs in a
temp dir, so the corpus is never changed. Prints medians of ``--runs`` runs:

- cold: a fresh process takes the first snapshot of ``huge`` (no index file);
- warm, other process: a fresh process loads the index another one wrote;
- warm, same process: a repeated snapshot (this process's memory of it);
- keep: 10 messages delivered into ``keep``'s ``new/`` after a session saw its ``cur/``
  (older than 2 s): lock + snapshot, read the 10, commit them as seen; in this process and
  as another process would (the in-process memory forgotten first).

    .venv-bench/bin/python -m bench.snapshot_timing [--corpus DIR] [--runs 5]

Each measurement runs in a child process of its own, so a cold snapshot pays for a fresh
heap as it does in a server worker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import os, sys, time
from pathlib import Path
from postoffice.storage import maildir_index
from postoffice.storage.maildir import MaildirMaildrop
path, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "keep":
    def age(sub):
        past = time.time_ns() - 3_000_000_000
        os.utime(path / sub, ns=(past, past))
    age("new"); age("cur")
    first = MaildirMaildrop(path); first.lock(); first.snapshot(); first.unlock()
    body = b"Subject: x\\n\\n" + (b"y" * 70 + b"\\n") * 60
    wire = len(body) + body.count(b"\\n")
    for i in range(10):
        name = f"{time.time_ns()}.M{i}P{os.getpid()}.bench,S={len(body)},W={wire}"
        (path / "new" / name).write_bytes(body)
    age("new")
    if sys.argv[3] == "other":
        maildir_index.forget_all()
for attempt in range(2 if mode == "same" else 1):  # "same" times the remembered one
    if attempt:
        maildrop.unlock()
    started = time.perf_counter()
    maildrop = MaildirMaildrop(path)
    maildrop.lock()
    messages = maildrop.snapshot()
if mode == "keep":
    fresh = [m for m in messages if m.key.startswith("new/")]
    for message in fresh:
        with maildrop.open(message) as f:
            f.read()
    maildrop.commit(deleted=[], retrieved=fresh)
maildrop.unlock()
print(time.perf_counter() - started)
"""


def child(path: Path, *args: str) -> float:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    return float(out.stdout.split()[-1])


def drop_index(maildir: Path) -> None:
    for name in os.listdir(maildir):
        if name not in ("cur", "new", "tmp"):
            os.unlink(maildir / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(tempfile.gettempdir()) / "postoffice-bench" / "corpus"
    parser.add_argument("--corpus", type=Path, default=default)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="snapshot-timing-"))
    try:
        huge, keep = work / "huge", work / "keep"
        for user, copy in (("huge", huge), ("keep", keep)):
            source = args.corpus / "users" / user / "Maildir"
            subprocess.run(["cp", "-al", str(source), str(copy)], check=True)
            drop_index(copy)
        figures: dict[str, list[float]] = {}
        for _ in range(args.runs):
            drop_index(huge)
            figures.setdefault("huge cold", []).append(child(huge, "cold"))
            figures.setdefault("huge warm, other process", []).append(child(huge, "other"))
            figures.setdefault("huge warm, same process", []).append(child(huge, "same"))
            figures.setdefault("keep, same process", []).append(child(keep, "keep", "same"))
            figures.setdefault("keep, other process", []).append(child(keep, "keep", "other"))
            time.sleep(0.1)
        for name, values in figures.items():
            listed = " ".join(f"{v:.4f}" for v in values)
            print(f"{name:28} median {statistics.median(values):.4f} s  [{listed}]")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
