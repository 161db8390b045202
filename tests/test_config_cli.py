"""Recipes and the command line's error contract: one line, exit 2, nothing half-written."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from vislab.config import Recipe, load_recipe, shipped_recipes
from vislab.errors import VislabError
from vislab.models import get_entry


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipes_are_valid(name):
    r = load_recipe(name)
    assert get_entry(r.model).task == r.task
    assert r.epochs > 0 and r.batch_size > 0 and 0 <= r.holdout < 1
    first = shipped_recipes()[name].read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) < 110  # `vislab recipes` shows it as one line


def test_overrides_make_a_new_recipe():
    base = load_recipe("cls-fast")
    new = base.with_overrides(epochs=1, lr=None)
    assert new.epochs == 1 and new.lr == base.lr and base.epochs != 1
    with pytest.raises(VislabError, match="unknown recipe fields: colour"):
        base.with_overrides(colour="red")


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(VislabError, match=re.escape("not valid YAML (line 2, column 1: expected ',' or ']'")):
        load_recipe(str(bad))  # the stream ends after the newline: line 2, column 1
    odd = tmp_path / "odd.yaml"
    odd.write_text(yaml.safe_dump({"task": "cls", "epoch": 3}))
    with pytest.raises(VislabError, match="unknown recipe keys: epoch"):
        load_recipe(str(odd))
    with pytest.raises(VislabError, match="no such recipe; shipped recipes: cls-best"):
        load_recipe("cls-nope")
    for given, said in ((tmp_path / "r5.yaml", "recipe file not found"), (tmp_path, "is a folder, but a recipe file is needed")):
        with pytest.raises(VislabError) as err:
            load_recipe(str(given))
        assert str(err.value).startswith(f"{given}: {said}; shipped recipes: cls-best")


def test_recipe_round_trips_through_yaml(tmp_path):
    r = load_recipe("seg-best")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r.to_dict()))
    assert load_recipe(str(p)) == r and isinstance(r, Recipe)


def test_errors_are_one_line_and_debug_shows_traceback(cli, tmp_path):
    res = cli("cls", "predict", tmp_path / "none.ckpt", tmp_path, tmp_path / "p.csv")
    assert res.code == 2 and res.err == f"vislab: error: {tmp_path / 'none.ckpt'}: no such run folder or checkpoint\n"
    with pytest.raises(VislabError):
        cli("--debug", "cls", "predict", tmp_path / "none.ckpt", tmp_path, tmp_path / "p.csv")
    with pytest.raises(VislabError):  # after the command, as a user adds it to the line that failed
        cli("cls", "predict", tmp_path / "none.ckpt", tmp_path, tmp_path / "p.csv", "--debug")


def test_a_long_line_is_never_broken_inside_on_either_stream(capsys, tmp_path):
    """A console line longer than the console (a deep path, in a log file or a narrow terminal)
    is written whole, so a path can be copied or grepped: progress on stderr, results on stdout.
    Rich breaks such lines at the console's width (80 when not a terminal) unless told not to."""
    from vislab.cli import out
    from vislab.log import console, info

    line = f"{tmp_path.joinpath(*['a-folder-with-a-long-name'] * 8, 'image.png')}: a message after the path"
    for con, write in ((console, info), (out, lambda text: out.print(text, markup=False))):
        before, con.width = con.width, 40
        try:
            write(line)
        finally:
            con.width = before
    assert capsys.readouterr() == (line + "\n", line + "\n")  # (out, err)


def test_usage_errors_are_one_line_naming_the_command(cli):
    """A missing argument, an unknown option or command and a value of the wrong type: one line,
    status 2, pointing at the command's help; a group without a command shows its help."""
    cases = [(("cls", "eval"), "Missing argument 'ckpt'. (see `vislab cls eval --help`)"),
             (("cls", "train", "--epochs", "x"), "Invalid value for '--epochs'"),
             (("models", "--bogus"), "No such option: --bogus (see `vislab models --help`)"),
             (("zzz",), "No such command 'zzz'. (see `vislab --help`)"),
             (("seg", "train", "--epochs"), "Option '--epochs' requires an argument. (see `vislab seg train --help`)"),
             (("cls", "train", "tr", "va"), "Got unexpected extra argument(s) (va); a validation folder goes with --val-dir "
                                            "(see `vislab cls train --help`)"),
             (("cls", "eval", "run", "va", "x"), "Got unexpected extra argument(s) (x) (see `vislab cls eval --help`)")]
    for args, said in cases:
        res = cli(*args)
        assert res.code == 2 and res.err.startswith("vislab: error: ") and res.err.count("\n") == 1, res.err
        assert said in res.err and "Traceback" not in res.err
    res = cli("seg")
    assert "Usage:" in res.out + res.err and "train" in res.out + res.err
    assert cli("seg", "--help").code == 0


def test_an_unforeseen_failure_is_one_line_with_status_1(cli, monkeypatch):
    import vislab.models as models

    def broken(*a, **k):
        raise RuntimeError("registry exploded\nsecond line")

    monkeypatch.setattr(models, "list_models", broken)
    res = cli("models")
    assert res.code == 1 and res.err == ("vislab: internal error: RuntimeError: registry exploded (rerun with "
                                         "--debug for the traceback, and please report it)\n")
    with pytest.raises(RuntimeError, match="registry exploded"):
        cli("--debug", "models")
    # a real allocation failure of torch on the CPU (a RuntimeError, not a MemoryError) is said as one
    with pytest.raises(RuntimeError, match="can't allocate memory") as err:
        torch.empty(1 << 62, dtype=torch.uint8)

    def too_big(*a, **k):
        raise err.value

    monkeypatch.setattr(models, "list_models", too_big)
    res = cli("models")
    assert res.code == 1 and res.err == "vislab: out of memory; try a smaller --batch-size (or --image-size / --crop-size)\n"
    # a training process's own errors: a bad input is said and exits as in one process (2), a divergence with 1
    from torch.multiprocessing.spawn import ProcessRaisedException

    for last, code, said in (("vislab.errors.VislabError: data/x.png: not an image", 2, "vislab: error: data/x.png: not an image"),
                             ("vislab.errors.Diverged: training diverged: ...", 1, "vislab: training diverged: ...")):
        def spawned(*a, _last=last, **k):
            raise ProcessRaisedException(f"\n\n-- Process 1 terminated with the following error:\nTraceback:\n{_last}\n", 1, 7)

        monkeypatch.setattr(models, "list_models", spawned)
        res = cli("models")
        assert (res.code, res.err) == (code, said + "\n")


def test_a_spawned_training_process_failure_is_said_by_its_own_error():
    """ddp_spawn hands a worker's error back as its traceback text, which starts with blank lines:
    the line is the traceback's last (the worker's own error), a worker's OOM is one, and vislab's
    own errors (a bad input, a diverged loss) are said in their own words."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    from vislab.errors import failure_line

    def raised(last: str) -> ProcessRaisedException:
        text = f"\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n  File x\n{last}\n"
        return ProcessRaisedException(text, 1, 4242)

    assert failure_line(raised("RuntimeError: boom")) == "internal error in a training process: RuntimeError: boom"
    assert failure_line(raised("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")) == \
        "out of memory; try a smaller --batch-size (or --image-size / --crop-size)"
    assert failure_line(RuntimeError("\n\nlater line")) == "internal error: RuntimeError: later line"
    line = "training diverged: the training loss became nan at epoch 2, batch 3 (learning rate 10); ..."
    assert failure_line(raised(f"vislab.errors.Diverged: {line}")) == line  # a worker's own line, as it said it
    assert failure_line(raised("vislab.errors.VislabError: data/x.png: not an image")) == "data/x.png: not an image"
    from vislab.errors import spawned_vislab_error

    assert spawned_vislab_error(raised("vislab.config.FieldError: recipe field lr must be > 0")) == \
        ("recipe field lr must be > 0", True)  # a subclass: a bad input (status 2)
    assert spawned_vislab_error(raised(f"vislab.errors.Diverged: {line}")) == (line, False)
    assert spawned_vislab_error(raised("vislab.errors.Nothing: x")) is None  # no such class: an internal error
    assert failure_line(raised("vislab.errors.Nothing: x")) == "internal error in a training process: vislab.errors.Nothing: x"


def test_only_rank_zero_writes_a_run_folders_records(monkeypatch):
    """Lightning's own launcher sets LOCAL_RANK alone in the processes it starts (and NODE_RANK on
    other nodes), torchrun RANK too; under srun with several tasks each task's SLURM_PROCID is its
    rank (one task, as in a batch script, is rank 0 whatever its number)."""
    from vislab.engine.run_folder import rank_zero

    for env, zero in (({}, True), ({"LOCAL_RANK": "1"}, False), ({"RANK": "2", "LOCAL_RANK": "0"}, False),
                      ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"NODE_RANK": "1"}, False),
                      ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, False), ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, True),
                      ({"SLURM_NTASKS": "1", "SLURM_PROCID": "2"}, True)):
        for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert rank_zero() is zero, env


def test_a_process_of_another_rank_leaves_the_run_folder_as_rank_zero_wrote_it(monkeypatch, tmp_path):
    """Lightning's ddp launcher runs the whole command again in each process it starts, after rank
    0 prepared the folder: those processes neither clear nor rewrite its records (rank 0's record
    of its own process, running.json, included), fresh run or resumed."""
    import json
    import os

    from vislab.config import load_recipe
    from vislab.engine.run_folder import prepare_run_folder

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    run, recipe = tmp_path / "run", load_recipe("cls-fast")
    prepare_run_folder(run, recipe, resume=False, command="vislab cls train x", changes=["a"])
    assert json.loads((run / "running.json").read_text())["pid"] == os.getpid()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setenv("LOCAL_RANK", "1")
    prepare_run_folder(run, recipe, resume=False, command="vislab cls train x", changes=["a", "b"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    import torch

    torch.save({"state_dict": {}}, run / "last.ckpt")
    prepare_run_folder(run, recipe, resume=True, command="vislab cls train x --resume", changes=["c"])
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "last.ckpt"} == before


def test_unknown_model_and_wrong_task_recipe(cli, color_classes, tmp_path):
    res = cli("summary", "resnet7")
    assert res.code == 2 and res.err.count("\n") == 1
    assert "unknown model 'resnet7' (closest: " in res.err and "`vislab models` lists" in res.err
    res = cli("cls", "train", color_classes, "--recipe", "seg-fast", "--out", tmp_path / "r")
    assert res.code == 2 and "is a seg recipe" in res.err


def test_output_where_a_file_blocks_the_folder(cli, color_classes, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    res = cli("cls", "train", color_classes, "--recipe", "cls-fast", "--out", blocker, "--epochs", "1")
    assert res.code == 2 and "blocker: is a file" in res.err


def test_models_and_recipes_listings(cli):
    res = cli("models", "fcn*")
    assert res.code == 0 and "fcn32s_vgg16" in res.out and "resnet50" not in res.out
    res = cli("models", "zzz*")
    assert res.code == 2 and "no registered model matches 'zzz*'" in res.err and not res.out.strip()
    res = cli("recipes")
    assert res.code == 0 and len([ln for ln in res.out.splitlines() if ln.strip()]) == len(shipped_recipes())
    # a description is the recipe's first sentence, whole, though its comment runs over lines
    line = next(ln for ln in res.out.splitlines() if ln.startswith("seg-cpu "))
    first = " ".join(ln[2:] for ln in shipped_recipes()["seg-cpu"].read_text().splitlines()[:3])
    assert line.endswith(first[: first.index(". ") + 1]) and "re-planned at epoch ends)." in line
    # a recipe whose budget sets the epochs shows the budget, the others their epochs
    assert " 100 min  Best P2 recipe" in line and " 20 ep  Defaults" in next(
        ln for ln in res.out.splitlines() if ln.startswith("seg-default "))
    res = cli("models", "deeplabv3_mobilenet*")  # a long name stays whole, to be copied
    assert "deeplabv3_mobilenet_v3_large" in res.out


def test_command_lists_give_each_summary_in_one_flow():
    """A group's command list reflows each command's first docstring paragraph (at 250 columns,
    the demo's summary is one line; Typer kept the docstring's own breaks, mid-sentence)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "250"}
    top = subprocess.run([sys.executable, "-m", "vislab", "--help"], capture_output=True, text=True, env=env).stdout
    line = next(row for row in top.splitlines() if " demo " in row)
    assert "from the offline ImageNet weights (recipe cls-demo" in line
    seg = subprocess.run([sys.executable, "-m", "vislab", "seg", "--help"], capture_output=True, text=True, env=env).stdout
    line = next(row for row in seg.splitlines() if " eval " in row)
    assert "the course rule for the course's masks, the standard rule" in line
