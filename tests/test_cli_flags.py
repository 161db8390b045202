"""Every flag is honoured or refused: an option given twice is one line naming it and its values
(never the last one silently), refused before any data is read; ``--limit-batches`` takes the
fraction its recipe field takes."""

from __future__ import annotations

import json
from typing import Optional

import pytest

from conftest import write_color_classes, write_cls_recipe


def _one_line(res, said: str, command: str) -> None:
    assert res.code == 2, (res.code, res.err)
    assert res.err == f"vislab: error: {said} (see `{command} --help`)\n", res.err
    assert not res.out.strip() and "Traceback" not in res.err


def test_every_command_and_group_counts_its_options():
    """One check for all: every command and group of the tree parses with the repeat check."""
    import typer

    from vislab.cli import OnceCommand, OnceGroup, app

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    found = list(walk(typer.main.get_command(app), "vislab"))
    assert len(found) > 20
    for path, command in found:
        assert isinstance(command, OnceCommand if not hasattr(command, "commands") else OnceGroup), path


@pytest.mark.parametrize("args, said", [
    (("cls", "train", "{data}", "--epochs", "1", "--epochs", "2"), "--epochs is given twice (1, 2); give it once"),
    (("cls", "train", "{data}", "--epochs=1", "--epochs", "2"), "--epochs is given twice (1, 2); give it once"),
    (("cls", "train", "{data}", "--limit-batches", "1", "--epochs", "1", "--limit-batches=2", "--limit-batches", "3"),
     "--limit-batches is given 3 times (1, 2, 3); give it once"),
    (("cls", "train", "{data}", "--resume", "--resume"), "--resume is given twice; give it once"),
    (("seg", "train", "{data}", "--teacher", "runs/a,runs/b", "--teacher", "runs/c"),
     "--teacher is given twice (runs/a,runs/b, runs/c); give it once"),
])
def test_a_train_flag_given_twice_trains_nothing(cli, tmp_path, args, said):
    data = write_color_classes(tmp_path / "train", per_class=2)
    run = tmp_path / "run"
    res = cli(*(a.format(data=data) for a in args), "--out", run)
    _one_line(res, said, f"vislab {args[0]} train")
    assert not run.exists()


@pytest.mark.parametrize("args, said", [
    (("seg", "score", "{run}", "{data}", "--offsets", "--no-offsets"),
     "--offsets is given twice (--offsets, --no-offsets); give it once"),
    (("seg", "score", "{run}", "{data}", "--no-offsets", "--json={out}.json", "--no-offsets"),
     "--offsets is given twice; give it once"),
    (("seg", "score", "{run}", "{data}", "--held-out", "--held-out"), "--held-out is given twice; give it once"),
    (("cls", "eval", "{run}", "{data}", "--tta", "flip", "--json", "{out}.json", "--tta", "shift"),
     "--tta is given twice (flip, shift); give it once"),
    (("cls", "predict", "{run}", "{data}", "{out}.csv", "--engine", "torch", "--engine", "onnx"),
     "--engine is given twice (torch, onnx); give it once"),
    (("cls", "predict", "{run}", "{data}", "{out}.csv", "--device", "cpu", "--device", "a b"),
     "--device is given twice (cpu, 'a b'); give it once"),
    (("seg", "predict", "{run}", "{data}", "{out}", "--offsets", "--offsets", "--no-offsets"),
     "--offsets is given 3 times (--offsets, --offsets, --no-offsets); give it once"),
    (("export", "{run}", "{out}.onnx", "--size", "32", "32", "--size", "64", "64"),
     "--size is given twice (32 32, 64 64); give it once"),
    (("summary", "resnet9_xs", "--input", "3", "32", "32", "--input", "3", "64", "64"),
     "--input is given twice (3 32 32, 3 64 64); give it once"),
    (("runs", "{run}", "--sort", "val", "--sort", "time"), "--sort is given twice (val, time); give it once"),
    (("cache", "clear", "--dry-run", "--unused-days", "1", "--unused-days", "2"),
     "--unused-days is given twice (1, 2); give it once"),
])
def test_an_option_given_twice_is_one_line_and_nothing_is_written(cli, tmp_path, args, said):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    res = cli(*(a.format(run=tmp_path / "missing-run", data=data, out=out) for a in args))
    command = "vislab " + " ".join(args[:2] if args[0] in ("cls", "seg", "cache") else args[:1])
    _one_line(res, said, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no JSON, CSV, masks or graph


@pytest.mark.parametrize("args,said", [
    (("cls", "train", "{data}", "--out", ""), "--out is empty; give a value"),  # would train into the current folder
    (("cache", "clear", "--source", ""), "--source is empty; give a value"),  # would clear the whole cache
    (("cls", "train", "{data}", "--weights", " ", "--out", "{out}"), "--weights is empty; give a value"),
    (("cls", "predict", "{out}", "", "p.csv"), "img_dir is empty; give a value"),
])
def test_an_empty_value_is_refused_before_any_work(cli, tmp_path, monkeypatch, args, said):
    """An empty value (an unset shell variable) is no path: as one it would mean the current folder."""
    monkeypatch.chdir(tmp_path)
    data = write_color_classes(tmp_path / "train", per_class=2)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*[a.format(data=data, out=tmp_path / "run") for a in args])
    _one_line(res, said, "vislab " + " ".join(args[:2]))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    res = cli("report", data, "--title", "", "--out", tmp_path / "r.html")  # an empty title is a title
    assert res.code == 2 and "holds no vislab run folders" in res.err and "is empty" not in res.err


def test_a_group_option_given_twice(cli):
    _one_line(cli("--debug", "--debug", "models"), "--debug is given twice; give it once", "vislab")


def test_positional_arguments_that_look_like_values_are_not_counted(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("cls", "eval", "flip", "flip", "--tta", "flip")  # a checkpoint and a folder named as the value
    assert res.code == 2 and res.err == "vislab: error: flip: no such run folder or checkpoint\n", res.err
    res = cli("cls", "train", "2", "--epochs", "2", "--out", "run")  # TRAIN_DIR "2" beside --epochs 2
    assert res.code == 2 and "given" not in res.err and res.err.startswith("vislab: error: 2: "), res.err
    assert not (tmp_path / "run").exists()
    res = cli("cls", "predict", "--engine", "torch", "r", "torch", "torch.csv")  # the value, then positionals
    assert res.code == 2 and res.err == "vislab: error: r: no such run folder or checkpoint\n", res.err


def test_a_list_of_runs_where_one_goes_is_named_as_such(cli, tmp_path):
    """A command that reads one model says so of a comma-separated list (not "no such run folder")."""
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    runs = f"{tmp_path / 'a'},{tmp_path / 'b'}"
    res = cli("seg", "calibrate", runs, tmp_path)
    assert res.code == 2 and res.err == (f"vislab: error: {runs}: a list of 2 models, and this command takes one "
                                         "run folder or checkpoint\n"), res.err


def test_help_still_works(cli):
    for args in (("cls", "train", "--help"), ("seg", "score", "--help"), ("--help",),
                 ("cls", "train", "--epochs", "1", "--epochs", "2", "--help"),  # help wins over the repeat
                 ("cls", "eval", "--help", "--help")):
        res = cli(*args)
        assert res.code == 0 and "Usage:" in res.out and not res.err, (args, res.err)


def test_options_declared_to_take_several_values_are_left_alone():
    """No vislab option takes several values today; one declared so (``multiple=True``, a count)
    keeps them all under the same command class, while a single-valued one beside it is refused."""
    import typer

    from vislab.cli import CLICK, OnceCommand

    app = typer.Typer()
    seen = {}

    @app.command(cls=OnceCommand)
    def tool(tag: Optional[list[str]] = typer.Option(None, "--tag"),
             verbose: int = typer.Option(0, "--verbose", "-v", count=True),
             name: str = typer.Option("x", "--name", "-n")) -> None:
        seen.update(tag=tag, verbose=verbose, name=name)

    command = typer.main.get_command(app)
    command.main(["--tag", "a", "--tag=b", "-vv", "--verbose", "-n", "y"], standalone_mode=False)
    assert seen == {"tag": ["a", "b"], "verbose": 3, "name": "y"}
    with pytest.raises(CLICK.exceptions.UsageError, match=r"^--name is given twice \(y, z\); give it once$"):
        command.main(["--name", "y", "-n", "z"], standalone_mode=False)  # a short alias counts as the option
    with pytest.raises(CLICK.exceptions.UsageError, match=r"^--name is given twice \(y, z\); give it once$"):
        command.main(["-ny", "--name=z"], standalone_mode=False)


def test_limit_batches_takes_a_fraction_of_the_batches(cli, tmp_path):
    """The recipe field limit_train_batches takes a count or a fraction (Lightning's rule: an int
    is batches, a float a fraction); the flag takes both too."""
    data = write_color_classes(tmp_path / "train", per_class=8)  # 24 images: 6 batches of 4
    recipe = write_cls_recipe(tmp_path, "r.yaml", model="resnet9_xs", epochs=1, batch_size=4, holdout=0)
    run = tmp_path / "run"
    res = cli("cls", "train", data, "--recipe", recipe, "--limit-batches", "0.5", "--out", run)
    assert res.code == 0, res.err
    assert json.loads((run / "inputs.json").read_text())["flags"] == {"limit_train_batches": 0.5}
    assert json.loads((run / "results.json").read_text())["global_step"] == 3  # half of the 6 batches
    said = "limit_train_batches 0.5: each epoch trains on 3 of its 6 batches (a fresh shuffle each)"
    assert said in (run / "changes.txt").read_text().splitlines() and f"setting: {said}" in " ".join(res.err.split())
    res = cli("cls", "train", data, "--recipe", recipe, "--limit-batches", "20", "--out", tmp_path / "all")
    assert res.code == 0, res.err  # a limit beyond the epoch limits nothing, and is said so
    assert "limit_train_batches 20: no limit, each epoch has 6 batches" in (tmp_path / "all" / "changes.txt").read_text()
    res = cli("cls", "train", data, "--recipe", recipe, "--limit-batches", "1.0", "--out", tmp_path / "whole")
    assert res.code == 0 and "limit_train_batches 1.0: no limit, each epoch has 6 batches" in \
        (tmp_path / "whole" / "changes.txt").read_text()  # 1.0, the whole epoch, not 1 batch
    # a fraction of the 6 batches that rounds to none trains one (Lightning alone would stop with an error)
    res = cli("cls", "train", data, "--recipe", recipe, "--limit-batches", "0.0001", "--out", tmp_path / "tiny")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "tiny" / "results.json").read_text())["global_step"] == 1
    assert "limit_train_batches 0.0001: each epoch trains on 1 of its 6 batches (a fresh shuffle each)" in \
        (tmp_path / "tiny" / "changes.txt").read_text().splitlines()


@pytest.mark.parametrize("value, said", [
    ("abc", "Invalid value for '--limit-batches': 'abc' is neither a number of batches (e.g. 20) nor a fraction "
            "of them (e.g. 0.25) (see `vislab {task} train --help`)"),
    ("0", "--limit-batches: must be an integer >= 1 (batches) or a fraction in (0, 1], got 0"),
    ("1.5", "--limit-batches: must be an integer >= 1 (batches) or a fraction in (0, 1], got 1.5"),
    ("-0.5", "--limit-batches: must be an integer >= 1 (batches) or a fraction in (0, 1], got -0.5"),
])
@pytest.mark.parametrize("task", ["cls", "seg"])
def test_a_bad_limit_batches_is_one_line_before_any_work(cli, tmp_path, value, said, task):
    run = tmp_path / "run"
    res = cli(task, "train", tmp_path / "no-such-folder", "--limit-batches", value, "--out", run)
    assert res.code == 2 and res.err == f"vislab: error: {said.format(task=task)}\n", res.err
    assert not run.exists()


def test_help_shows_that_limit_batches_takes_a_fraction(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    for task in ("cls", "seg"):
        res = cli(task, "train", "--help")
        line = next(row for row in res.out.splitlines() if "--limit-batches" in row)
        assert "<int|fraction>" in line and "<int>" not in line and "fraction of them" in line


def test_true_precisions_train_the_network_in_their_type(cli, tmp_path):
    """64-true, 16-true and bf16-true cast the network itself: its inputs, float32 from the
    normalisation, stopped the first step ("Input type (torch.FloatTensor) and weight type
    (torch.DoubleTensor) should be the same") as an internal error."""
    import torch

    data = write_color_classes(tmp_path / "d", per_class=8)
    recipe = write_cls_recipe(tmp_path, "r.yaml", epochs=1, batch_size=8)
    for precision, dtype in (("64-true", torch.float64), ("bf16-true", torch.bfloat16)):
        run = tmp_path / precision
        res = cli("cls", "train", data, "--recipe", recipe, "--out", run, "--precision", precision)
        assert res.code == 0, res.err
        state = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {dtype}
        assert cli("cls", "eval", run, data).code == 0  # and it scores
