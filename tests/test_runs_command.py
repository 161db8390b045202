"""`vislab runs`: the run folders under a folder, a line each, read from what the runs wrote."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import yaml

from conftest import write_cls_recipe

_recipe = write_cls_recipe


def _rows(cli, *args):
    res = cli("runs", *args)
    assert res.code == 0, res.err
    return res


def test_runs_lists_finished_stopped_and_unfinished_runs_from_their_records(cli, color_classes, tmp_path):
    runs = tmp_path / "runs"
    full, stopped = runs / "full", runs / "group" / "stopped"
    assert cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "a.yaml"), "--out", full,
               "--val-dir", color_classes).code == 0
    assert cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "b.yaml", max_minutes=1e-6),
               "--out", stopped).code == 0
    unfinished = runs / "unfinished"
    shutil.copytree(full, unfinished)
    (unfinished / "results.json").unlink()  # as a run killed before its end leaves it
    resumed = runs / "resumed"  # --resume under way (or killed): a command more than the results counted
    shutil.copytree(full, resumed)
    with (resumed / "command.txt").open("a") as fh:
        fh.write("vislab cls train --resume\n")
    copied = runs / "copied"  # copied without keeping file times: last.ckpt newer than the results, yet finished
    shutil.copytree(full, copied)
    later = (copied / "results.json").stat().st_mtime + 60
    os.utime(copied / "last.ckpt", (later, later))
    older = runs / "older"  # results of an older vislab (no count of commands): file times decide
    shutil.copytree(copied, older)
    done = json.loads((older / "results.json").read_text())
    assert done.pop("commands") == 1  # the command that trained it
    (older / "results.json").write_text(json.dumps(done))
    os.utime(older / "last.ckpt", (later + 60, later + 60))
    res = _rows(cli, runs, "--json", tmp_path / "runs.json")
    rows = {r["run"]: r for r in json.loads((tmp_path / "runs.json").read_text())["runs"]}
    assert set(rows) == {str(full), str(stopped), str(unfinished), str(resumed), str(copied), str(older)}
    every = dict(rows)
    for run in (resumed, older):
        state = rows[str(run)]["state"]
        assert state.startswith("a --resume started after its results (running, interrupted or failed)")
        del rows[str(run)]
    assert rows.pop(str(copied))["state"] == "finished"

    done = json.loads((full / "results.json").read_text())
    row = rows[str(full)]
    assert (row["task"], row["model"], row["epochs"], row["metric"]) == ("cls", "cifar_resnet20", "2", "accuracy")
    assert row["minutes"] == done["train_seconds"] / 60 and row["state"] == "finished"
    assert row["held_out"] == done["holdout_acc"] and row["val"] == done["val_accuracy"]

    row = rows[str(stopped)]
    assert row["epochs"] == "1 of 2" and row["state"] == "stopped early (max_minutes); --resume continues it"
    assert row["val"] is None  # no --val-dir

    with (unfinished / "history.csv").open() as fh:
        history = list(csv.DictReader(fh))
    row = rows[str(unfinished)]
    assert row["held_out"] == max(float(h["holdout_acc"]) for h in history)  # the best so far
    import torch

    states = torch.load(unfinished / "last.ckpt", weights_only=False)["callbacks"]
    (clock,) = [v["spent_s"] for k, v in states.items() if k.startswith("TrainingClock")]
    assert row["minutes"] == clock / 60  # to its checkpoint, as --resume counts (test_an_unfinished_run_shows...)
    assert row["state"] == "unfinished (running, interrupted or failed); last.ckpt: --resume continues it"

    # the console: a header and a line per run, oldest write first, columns aligned
    lines = res.out.splitlines()
    assert lines[0].split()[:3] == ["run", "task", "model"] and len(lines) == 7
    order = sorted(every.values(), key=lambda r: r["updated"])
    assert [line.split()[0] for line in lines[1:]] == [r["run"] for r in order]
    assert lines[6].split()[0] == str(older)  # its last write: the newest
    assert len({line.index(" cls ") for line in lines[1:]}) == 1
    # a run folder given itself is listed alone
    assert len(_rows(cli, full).out.splitlines()) == 2
    # a finished run whose best checkpoint was cut short (a copy that stopped) is not listed as whole
    blob = (copied / "best.ckpt").read_bytes()
    (copied / "best.ckpt").write_bytes(blob[: len(blob) // 2])
    _rows(cli, copied, "--json", tmp_path / "cut.json")
    (row,) = json.loads((tmp_path / "cut.json").read_text())["runs"]
    assert row["state"] == "finished; best.ckpt is cut short or damaged (not the zip file torch writes)"


def test_runs_sorts_by_score_per_task_and_says_what_it_cannot_read(cli, tmp_path):
    def run(name, task, results, history=None):
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "recipe.yaml").write_text(yaml.safe_dump({"task": task, "model": "m", "epochs": 3}))
        if results is not None:
            (d / "results.json").write_text(json.dumps(results))
        if history is not None:
            (d / "history.csv").write_text(history)
        return d

    run("a", "seg", {"holdout_miou": 0.5, "val_miou": 0.61, "epochs": 3, "train_seconds": 90})
    run("b", "seg", {"holdout_miou": 0.7, "val_miou": 0.59, "epochs": 3, "train_seconds": 60})
    run("c", "cls", {"holdout_acc": 0.8, "val_accuracy": 0.82, "epochs": 3, "train_seconds": 30})
    run("d", "seg", None, "epoch,holdout_miou,seconds\n1,0.2,30\n2,0.4,30\n")  # unfinished, no checkpoint
    broken = run("e", "seg", None, "epoch\n1\n")
    odd = run("deep/er/g", "cls", {"holdout_acc": 0.5, "epochs": 3, "train_seconds": 30})  # not searched
    (odd / "recipe.yaml").write_text("task: cls\nepochs: 3\nlearning_rate: 0.1\n")  # edited by hand
    (broken / "recipe.yaml").write_text("task: [seg\n")
    run(".hidden/x", "cls", {"val_accuracy": 0.9})
    run("deep/er/z", "cls", {"val_accuracy": 0.9})  # three levels down: not searched
    started = run("started", "seg", None)  # stopped in its first epoch: its command and recipe only
    (started / "command.txt").write_text("vislab seg train --out started\n")
    run("f", "cls", [])  # results.json that is JSON but no record
    (tmp_path / "notarun").mkdir()

    assert cli("runs", tmp_path, "--json", tmp_path / "v.json", "--sort", "val").code == 0
    rows = json.loads((tmp_path / "v.json").read_text())["runs"]
    names = [r["run"].rsplit("/", 1)[1] for r in rows]
    # cls; then seg by val, those without one last; the unreadable ones (no task) at the end
    assert names[:3] == ["c", "a", "b"] and set(names[3:5]) == {"d", "started"} and set(names[5:]) == {"e", "f"}
    by = {n: r for n, r in zip(names, rows)}
    assert by["f"]["state"] == f"unreadable: {tmp_path / 'f' / 'results.json'}: not the record vislab writes " \
        "(expected a JSON object)"
    assert by["started"]["epochs"] == "0 of 3" and by["started"]["state"].endswith("; no checkpoint")
    assert (by["a"]["metric"], by["a"]["val"], by["a"]["minutes"]) == ("mIoU", 0.61, 1.5)
    assert by["d"]["held_out"] == 0.4 and by["d"]["minutes"] == 1.0 and by["d"]["epochs"] == "2 of 3"
    assert by["d"]["state"].endswith("; no checkpoint")
    assert by["e"]["state"].startswith(f"unreadable: {broken / 'recipe.yaml'}: not valid YAML")
    assert cli("runs", odd, "--json", tmp_path / "g.json").code == 0
    assert json.loads((tmp_path / "g.json").read_text())["runs"][0]["state"] == \
        f"unreadable: {odd / 'recipe.yaml'}: unknown recipe keys: learning_rate"
    assert cli("runs", tmp_path, "--json", tmp_path / "h.json", "--sort", "held-out").code == 0
    rows = json.loads((tmp_path / "h.json").read_text())["runs"]
    assert [r["run"].rsplit("/", 1)[1] for r in rows][:3] == ["c", "b", "a"]
    # a record damaged by hand: the broken file named, or the odd value shown as unknown
    (run("more/h", "seg", None) / "history.csv").write_bytes(b"epoch,seconds\n1,\xff\xfe\n")
    run("more/i", "cls", {"holdout_acc": 0.5, "epochs": 3, "train_seconds": "n/a"})
    assert cli("runs", tmp_path / "more", "--json", tmp_path / "m.json").code == 0
    by = {r["run"].rsplit("/", 1)[1]: r for r in json.loads((tmp_path / "m.json").read_text())["runs"]}
    assert by["h"]["state"] == f"unreadable: {tmp_path / 'more' / 'h' / 'history.csv'}: not readable as CSV text " \
        "(UnicodeDecodeError)"
    assert (by["i"]["minutes"], by["i"]["held_out"], by["i"]["state"]) == (None, 0.5, "finished")


def test_runs_refuses_what_holds_no_runs(cli, tmp_path):
    res = cli("runs", tmp_path / "nowhere")
    assert res.code == 2 and f"{tmp_path / 'nowhere'}: not found" in res.err
    (tmp_path / "empty").mkdir()
    res = cli("runs", tmp_path / "empty")
    assert res.code == 2 and f"{tmp_path / 'empty'}: holds no vislab run folders" in " ".join(res.err.split())
    res = cli("runs", tmp_path / "empty", "--sort", "speed")
    assert res.code == 2 and "--sort: unknown order 'speed'; choose time, held-out, val" in res.err


def test_an_unfinished_run_shows_the_schedule_its_budget_re_planned(cli, color_classes, tmp_path):
    """recipe.yaml keeps a budget's first plan; a re-plan lives in the checkpoints until the run
    ends. An unfinished run shows its checkpoint's schedule ("1 of 5", not "1 of 2"), in `vislab
    runs` and in the report; a checkpoint that cannot be read leaves the recipe's. Its minutes are
    its checkpoint's clock (what a --resume counts from), else its history's seconds."""
    import torch

    runs = tmp_path / "runs"
    run = runs / "killed"
    recipe = _recipe(tmp_path, "r.yaml", model="simple_cnn", max_minutes=1e-6)  # stopped after epoch 1 of 2
    assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", run).code == 0
    (run / "results.json").unlink()  # as a run killed before its end leaves it
    ckpt = torch.load(run / "last.ckpt", weights_only=False)
    ckpt["vislab"]["replanned"] = {"epochs": 5, "total": 30, "knots": [[6, 30]], "stop": None}
    (clock,) = [k for k in ckpt["callbacks"] if k.startswith("TrainingClock")]
    ckpt["callbacks"][clock]["spent_s"] = 93.0  # the seconds trained to this save: what --resume counts from
    torch.save(ckpt, run / "last.ckpt")
    broken = runs / "broken"
    shutil.copytree(run, broken)
    (broken / "last.ckpt").write_bytes(b"not a checkpoint")
    # killed after epoch 2's history row, before its checkpoint: the checkpoint's 1 epoch is what counts
    with (run / "history.csv").open() as fh:
        lines = fh.read().splitlines()
    (run / "history.csv").write_text("\n".join([*lines, lines[-1].replace("1,", "2,", 1)]) + "\n")
    _rows(cli, runs, "--json", tmp_path / "runs.json")
    rows = {r["run"]: r for r in json.loads((tmp_path / "runs.json").read_text())["runs"]}
    assert rows[str(run)]["epochs"] == "1 of 5" and rows[str(broken)]["epochs"] == "1 of 2"
    assert (rows[str(run)]["epochs_trained"], rows[str(run)]["epochs_planned"]) == (1, 5)
    with (broken / "history.csv").open() as fh:  # no clock to read there: the epochs' own seconds
        seconds = sum(float(r["seconds"]) for r in csv.DictReader(fh))
    assert rows[str(run)]["minutes"] == 93.0 / 60 and rows[str(broken)]["minutes"] == pytest.approx(seconds / 60)
    assert rows[str(run)]["state"].endswith("; last.ckpt: --resume continues it")
    assert rows[str(broken)]["state"].endswith("; last.ckpt cannot be read: no --resume from it")
    assert cli("report", run, "--out", tmp_path / "r.md").code == 0
    assert "1 trained, of a 5-epoch schedule (recipe.yaml: 2, before the budget's re-plans)" in \
        (tmp_path / "r.md").read_text()


def test_a_process_record_tells_running_killed_and_another_machine(tmp_path):
    """running.json's process: this one runs; a process that has ended (a zombie too: it has ended
    and waits for its parent to collect it), a later one given the same number (another start
    time) or one from before the machine restarted (another boot) does not; one on another machine
    or in another container (PID namespace) is not checked; a record of an earlier piece, or of
    the folder this one was copied from, is none of this folder's."""
    import subprocess
    import sys
    import time

    from vislab.runfolders import process_alive, process_record, process_start, training_process

    me = os.getpid()
    assert process_alive(me, process_start(me)) and process_alive(me, None) and not process_alive(0, None)
    if process_start(me) is not None:  # Linux: a reused number is another process
        assert not process_alive(me, process_start(me) + 1)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not process_alive(gone.pid, None)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and os.path.exists(f"/proc/{zombie.pid}") and \
            open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.02)
    try:
        if os.path.exists(f"/proc/{zombie.pid}"):  # ended, not yet collected: still in the process table
            os.kill(zombie.pid, 0)
            assert not process_alive(zombie.pid, process_start(zombie.pid))
    finally:
        zombie.wait()
    (tmp_path / "command.txt").write_text("vislab cls train a\nvislab cls train a --resume\n")
    here = process_record()

    def record(**kw):
        (tmp_path / "running.json").write_text(json.dumps({"commands": 2, **here, "since": 0,
                                                           "folder": str(tmp_path.resolve()), **kw}))
        return training_process(tmp_path, ["a", "b"])

    assert record()["alive"] is True
    assert record(pid=gone.pid, started=None)["alive"] is False
    assert record(boot="another boot")["alive"] is False
    assert record(host="elsewhere") == {"pid": me, "host": "elsewhere", "since": 0, "alive": None}
    assert record(pid_space="pid:[1]")["alive"] is None
    assert record(commands=1) is None  # an earlier piece's record
    assert record(folder=str(tmp_path / "original")) is None  # copied with the folder it describes


def test_a_training_refused_for_a_run_in_training_leaves_that_runs_records_alone(tmp_path):
    """Two trainings of one run started together: both pass the check before the data is read; the
    later to write the folder is refused there, after the other wrote its command line. The
    refusal is no failure of the run: no failed.json or "stopped:" line, the other's record stays."""
    import subprocess
    import sys

    import pytest

    from vislab.config import load_recipe
    from vislab.engine.run_folder import prepare_run_folder, training_recorded
    from vislab.errors import VislabError
    from vislab.runfolders import process_record, process_start

    run, recipe = tmp_path / "run", load_recipe("cls-fast")
    prepare_run_folder(run, recipe, resume=False, command="vislab cls train x", changes=["a"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(VislabError, match="another vislab is training this run"):
            with training_recorded(run):  # as the later process: the other started its piece meanwhile
                (run / "command.txt").write_text("vislab cls train x\nvislab cls train x --resume\n")
                theirs = {"commands": 2, "folder": str(run.resolve()), **process_record(), "pid": other.pid,
                          "started": process_start(other.pid)}
                (run / "running.json").write_text(json.dumps(theirs))
                before = {p.name: p.read_bytes() for p in run.iterdir()}
                prepare_run_folder(run, recipe, resume=True, command="vislab cls train x --resume", changes=["a"])
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    finally:
        other.kill()
        other.wait()


def _start_together(run, barrier, done, results):  # one of the processes of the test below
    from vislab.config import load_recipe
    from vislab.engine.run_folder import prepare_run_folder
    from vislab.errors import VislabError

    barrier.wait()
    try:
        prepare_run_folder(run, load_recipe("cls-fast"), resume=False, command="vislab cls train x")
        results.put("claimed")
    except VislabError as exc:
        results.put(str(exc))
    done.wait()  # alive until every process has tried: the one that claimed the run trains it


def test_of_trainings_started_together_into_one_folder_one_claims_it(tmp_path):
    """Four processes prepare one new run folder at the same moment: the record of the training
    process is claimed in one step with the check, so exactly one goes on and the others are
    refused; the folder then names the one that claimed it."""
    import multiprocessing

    from vislab.runfolders import process_in

    ctx = multiprocessing.get_context("fork")  # the children start with vislab imported: together
    run, n = tmp_path / "run", 4
    barrier, done, results = ctx.Barrier(n), ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_start_together, args=(run, barrier, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        said = [results.get(timeout=60) for _ in range(n)]
        holder = process_in(run / "running.json", run)
        assert said.count("claimed") == 1, said
        assert all("another vislab is training this run (running: process" in s for s in said if s != "claimed"), said
        assert holder["alive"] and holder["pid"] in {p.pid for p in procs}
    finally:
        done.wait(timeout=60)
        for p in procs:
            p.join(timeout=60)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no claim left half done


def test_a_claim_replaces_the_record_of_a_process_that_ended_and_refuses_a_live_one(tmp_path):
    import subprocess
    import sys

    import pytest

    from vislab.engine.run_folder import _claim
    from vislab.errors import VislabError
    from vislab.runfolders import process_in, process_record, process_start

    run = tmp_path / "run"
    run.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for stale in ({**process_record(), "pid": gone.pid, "commands": 1}, "{not json"):
        (run / "running.json").write_text(stale if isinstance(stale, str) else json.dumps(stale))
        _claim(run, pieces=1)
        assert process_in(run / "running.json", run)["pid"] == os.getpid()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = json.dumps({**process_record(), "pid": other.pid, "started": process_start(other.pid), "commands": 1})
        (run / "running.json").write_text(theirs)
        with pytest.raises(VislabError, match=f"another vislab is training this run \\(running: process {other.pid}"):
            _claim(run, pieces=2)
        assert (run / "running.json").read_text() == theirs
    finally:
        other.kill()
        other.wait()
    assert sorted(p.name for p in run.iterdir()) == ["running.json"]


def test_the_done_line_names_the_epoch_of_the_model():
    from pathlib import Path

    from vislab.engine.run_folder import done_line

    result = {"holdout_miou": 0.61234, "val_miou": 0.6, "best_epoch": 3, "epochs": 5, "train_seconds": 120.0,
              "checkpoint": "r/best.ckpt"}
    assert done_line(Path("r"), result) == ("done: holdout_miou 0.6123 (epoch 3, best.ckpt), val_miou 0.6000, "
                                            "5 epochs in 2.0 min; r/results.json holds every number, r/best.ckpt is "
                                            "the model")
