"""Bad input that used to get through, and outputs a kill or a full disk must not leave half-written: duplicate
image ids, sizes a model cannot see at, a truncated checkpoint to resume, atomic outputs (a study killed three
times resumes to the report of an uninterrupted one), a full disk while saving a checkpoint, two runs into one
folder."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MINI, REPO, sodet_cli

from sodet.errors import SodetError


def test_duplicate_image_ids_are_refused_before_any_work(tmp_path):
    root = tmp_path / "dup"
    shutil.copytree(MINI, root, ignore=shutil.ignore_patterns(".sodet"))
    ann = root / "annotations" / "val.json"
    d = json.loads(ann.read_text())
    d["images"][3]["id"] = d["images"][0]["id"]
    ann.write_text(json.dumps(d))
    for command in (["val"], ["train", "--epochs", "1"]):
        r = sodet_cli(*command, "--data", str(root), "--imgsz", "160", "--device", "cpu", cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip() == f"error: {ann}: duplicate image id {d['images'][0]['id']} (every image needs its own id)"


def test_sizes_are_checked_and_rounded_as_the_engine_rounds(tmp_path):
    from sodet.options import check_imgsz

    for bad in (-5, 0, 8, 31, 100.5, "x"):
        with pytest.raises(SodetError, match="--imgsz must be"):
            check_imgsz(bad)
    check_imgsz(32)
    from sodet.api import val

    _, m = val(model="yolox-nano", data=str(MINI), imgsz=150, device="cpu", out=str(tmp_path / "v"))  # rounded up to 160
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["options"]["engine"]["imgsz"] == 160
    r = sodet_cli("study", "--dry-run", "--imgsz", "-5", cwd=tmp_path)
    assert r.returncode == 1 and "--imgsz must be a positive integer" in r.stderr


def test_resuming_a_truncated_checkpoint_says_it_cannot_be_read(tmp_path):
    last = tmp_path / "run" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    data = (REPO / "sodet" / "weights" / "yolox_nano_coco_fusedbn.pth").read_bytes()
    last.write_bytes(data[: len(data) // 3])
    r = sodet_cli("train", "--resume", str(last), cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith(f"error: cannot read weights file {last}: ")
    assert "not found" not in r.stderr


def test_a_full_disk_while_saving_leaves_the_previous_checkpoints(tmp_path, monkeypatch):
    """Epoch 2's save fails with ENOSPC: one line naming the checkpoint and the free space; epoch 1's last.pt and
    best.pt still load."""
    from sodet.api import train

    real = Path.write_bytes
    saves = []

    def write_bytes(self, data):
        if self.name.startswith(".") and self.name.endswith(".pt.tmp"):
            saves.append(self.name)
            if len(saves) > 2:  # epoch 1 wrote last and best; epoch 2 finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(SodetError) as e:
        train(model="yolox-nano", data=str(MINI), epochs=2, imgsz=128, batch=16, workers=0, device="cpu", plots=False,
              project=str(tmp_path), name="full", fraction=0.5)
    message = str(e.value)
    last = tmp_path / "full" / "weights" / "last.pt"
    assert message.startswith(f"cannot save checkpoint {last}: No space left on device (") and "MiB free in" in message
    assert "the previous last.pt and best.pt are intact" in message
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / "full" / "weights" / name, weights_only=False)
        assert ck["epoch"] == 0 and (ck.get("ema") or ck["model"]) is not None
    assert not list((tmp_path / "full" / "weights").glob(".*.tmp"))


def test_a_second_run_into_a_held_folder_is_refused_and_a_dead_lock_is_taken_over(tmp_path, capsys):
    from sodet.runlock import lock_path, run_lock

    run = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(run).write_text(str(holder.pid))
        r = sodet_cli("train", "--epochs", "1", "--project", str(tmp_path), "--name", "exp", "--exist-ok", cwd=tmp_path)
        assert r.returncode == 1 and f"run folder {run} is in use by process {holder.pid}" in r.stderr
        assert not run.exists()  # refused before the engine wrote anything there
    finally:
        holder.kill()
        holder.wait()
    notes = []
    with run_lock(run, notes.append) as path:  # the holder is gone: its lock is taken over
        assert path.read_text() == str(os.getpid())
    assert notes and f"left by process {holder.pid}, which is not running" in notes[0]
    assert not lock_path(run).exists()


def test_outputs_are_written_whole(tmp_path, monkeypatch):
    """metrics.json, predictions.json, study.json and the weights cache go through a temporary file: a failing
    write leaves the old file as it was."""
    from sodet.files import write_text_atomic

    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(SodetError, match=r"cannot write .*metrics.json: No space left on device \(\d+ MiB free"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def smoke_study(tmp_path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "sodet.cli", "study", "--only", "baseline,cp", "--project", str(tmp_path), "--name", name,
            "-o", "fraction=0.25"]


def test_a_study_killed_at_random_points_resumes_to_the_uninterrupted_report(tmp_path):
    """kill -9 at three random moments (while cells train, score or write), then a resume: only unfinished cells
    run again and every number of the report is the uninterrupted study's (cells are deterministic on CPU)."""
    reference = subprocess.run(smoke_study(tmp_path, "ref"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    rng = random.Random(0)
    for _ in range(3):
        p = subprocess.Popen(smoke_study(tmp_path, "killed"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(3, 25))
        os.killpg(p.pid, signal.SIGKILL)  # the study and the cell it runs
        p.wait()
    done = subprocess.run(smoke_study(tmp_path, "killed"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = json.loads((tmp_path / "killed" / "study.json").read_text())
    assert {c["status"] for c in study["cells"].values()} == {"done"}

    def numbers(name):
        rows = (tmp_path / name / "cells.csv").read_text().splitlines()
        header = rows[0].split(",")
        keep = [header.index(k) for k in ("setting", "seed", "AP", "APs", "APm", "AR100", "images_seen", "optimizer_steps")]
        return [[r.split(",")[i] for i in keep] for r in rows[1:]]

    assert numbers("killed") == numbers("ref")
