"""kill -9 inside the stages that write the bundle: what was there survives, and the next run finishes the job.

Each stage runs as a real `bertrec` process that SIGKILLs itself at a chosen point: mid-epoch in
train, and in embed/index just before and just after the old output is moved aside. The register
stage's kills are in test_registry.py (they need the MLflow server).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bertrec.model.bundle import read_training
from bertrec.model.index import read_index
from bertrec.model.layout import EMBEDDINGS, INDEX
from bertrec.model.train import CHECKPOINTS
from bertrec.model.vectors import read_embeddings

from builders import project_args, run_steps

pytestmark = pytest.mark.integration

# Runs `bertrec ARGS` after PATCH (Python code that may call die()); the argv comes as sys.argv[1:].
LAUNCH = """
import os, signal, sys
def die():
    os.kill(os.getpid(), signal.SIGKILL)
{patch}
from bertrec.cli import app
sys.argv = ["bertrec", *sys.argv[1:]]
app()
"""

# Kill in train's second epoch, after its second optimiser step: epoch 1 is checkpointed, epoch 2 is not.
MID_EPOCH = """
import torch
first = {checkpoint!r}
steps = []
step = torch.optim.AdamW.step
def counted(self, *args, **kwargs):
    if os.path.exists(first):
        steps.append(1)
        if len(steps) == 2:
            die()
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = counted
"""

# Kill when the new folder is complete, at a rename that replaces {target}: "before" the old one is
# moved aside, or "after" it was (the new one not yet in its place).
AT_SWITCH = """
replace = os.replace
def killing(src, dst):
    aside = str(src) == {target!r} and ".old-" in str(dst)
    if aside and {moment!r} == "before":
        die()
    replace(src, dst)
    if aside:
        die()
os.replace = killing
"""


def killed(args: list[str], patch: str) -> str:
    """Run `bertrec ARGS` with ``patch`` in a fresh process that must end by SIGKILL; returns its output."""
    code = LAUNCH.format(patch=patch)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def training_metrics(bundle: Path) -> dict:
    """What the bundle's training record says of the run: best epoch and its metrics, loss and metrics per epoch."""
    record = read_training(bundle)
    epochs = [(e["epoch"], e["loss"], e["valid"]) for e in record["epochs"]]
    return {"best_epoch": record["best_epoch"], "best_valid": record["best_valid"], "epochs": epochs}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_encoder):
    """Prepared data and splits; a bundle trained, embedded and indexed without interruption."""
    root = tmp_path_factory.mktemp("kill9")
    args = project_args(root, tiny_encoder, "train.epochs=3", "model.dropout=0.1")
    run_steps(args, ("prepare", "split", "train", "embed", "index"))
    return root, args


def test_train_killed_mid_epoch_resumes_to_the_same_metrics(project, tmp_path):
    root, args = project
    whole = training_metrics(root / "bundle")
    # Given the same project training into another bundle and metrics folder
    moved = [*args, "--set", f"paths.bundle={tmp_path / 'bundle'}", "--set", f"paths.metrics={tmp_path / 'metrics'}"]
    checkpoints = tmp_path / "bundle" / CHECKPOINTS / CHECKPOINTS  # train's work folder, then its checkpoints
    # When train is killed in the middle of its second epoch
    killed(["train", *moved], MID_EPOCH.format(checkpoint=str(checkpoints / "epoch-0001.pt")))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0001.pt"]
    assert not (tmp_path / "bundle" / "model").exists()
    # Then train, run again, resumes from epoch 1 and ends with the uninterrupted run's metrics
    run_steps(moved, ("train",))
    assert training_metrics(tmp_path / "bundle") == whole
    assert len(whole["epochs"]) == 3
    assert not checkpoints.parent.exists()


@pytest.mark.parametrize(("stage", "moment"), [("embed", "after"), ("index", "before")])
def test_embed_and_index_killed_while_switching_keep_the_previous_output(project, stage, moment):
    root, args = project
    folder = root / "bundle" / {"embed": EMBEDDINGS, "index": INDEX}[stage]
    before = files(folder)
    # When the stage is killed with its new output complete, just before or just after the old one is moved aside
    killed([stage, *args], AT_SWITCH.format(target=str(folder), moment=moment))
    # Then the bundle's readers find the previous output, byte for byte
    read_embeddings(root / "bundle") if stage == "embed" else read_index(folder)
    assert files(folder) == before
    # And the next run of the stage writes its output and leaves nothing of the killed one behind
    run_steps(args, (stage,))
    assert files(folder).keys() == before.keys()
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")] == []
