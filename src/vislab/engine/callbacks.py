"""Callbacks: the module's work before training; per-epoch history file and a one-line epoch summary
for logs; a stop when the weights stop being numbers; the time limit and the time budget held
during a run; the facts of a run handed back to the process that called ``fit``."""

from __future__ import annotations

import csv
import io
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl

from vislab.errors import Diverged
from vislab.io import atomic_write_text
from vislab.log import info


FACTS = "vislab/"
"""The prefix of the facts :class:`HandBack` puts into ``trainer.callback_metrics``."""


class HandBack(pl.Callback):
    """What the caller of ``fit`` reads once it returns, put by rank 0 into
    ``trainer.callback_metrics`` (under :data:`FACTS`) at the fit's end: the steps trained, the
    epochs completed, the selecting checkpoint's best score, and each callback's and the module's
    ``facts()``. With ``ddp_spawn`` (and ``ddp_fork``) the fit runs in child processes, and
    Lightning hands back to the calling process only the weights, the best checkpoint's path, the
    trainer's state and these metrics; :func:`handed_back` reads them, the same way for every
    strategy."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        facts: dict[str, Any] = {"global_step": int(trainer.global_step), "epochs_done": int(trainer.current_epoch),
                                 "best_score": None if score is None else float(score)}
        for part in (*trainer.callbacks, pl_module):
            facts.update(getattr(part, "facts", dict)())
        # plain numbers and strings: the spawn launcher pickles these metrics (torch.load weights_only)
        trainer.callback_metrics.update({FACTS + k: v for k, v in facts.items() if v is not None})


def handed_back(trainer: pl.Trainer) -> dict[str, Any]:
    """The facts :class:`HandBack` recorded (``{}`` when the fit never reached its end)."""
    return {k.removeprefix(FACTS): v for k, v in trainer.callback_metrics.items() if k.startswith(FACTS)}


class BeforeTraining(pl.Callback):
    """The first callback: the module's ``before_training()`` (work that only a run which trains
    needs, on the training device), timed in ``seconds``, before the budget and the history start
    their clocks in ``on_train_start``; a resumed run that finished its schedule never gets here."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch

        work = getattr(pl_module, "before_training", None)
        if work is None:
            return
        t0 = time.perf_counter()
        gpu = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpu):  # whatever it draws leaves training's random states as they were
            work()
        trainer.strategy.barrier("before_training")  # no process starts its clocks waiting for another's pass
        self.seconds += time.perf_counter() - t0

    def facts(self) -> dict[str, Any]:
        return {"before_training_seconds": self.seconds}


class EpochHistory(pl.Callback):
    """Write ``history.csv`` (one row per epoch) in the run folder and print a summary line."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / "history.csv"
        self._t0 = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        row: dict[str, Any] = {"epoch": epoch + 1}
        for k, v in sorted(trainer.callback_metrics.items()):
            if k.endswith("_step") or k.startswith(("lr-", FACTS)):
                continue
            row[k.removesuffix("_epoch")] = round(float(v), 6)
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - self._t0, 2)
        rows = self._read()
        rows = [r for r in rows if int(r["epoch"]) < epoch + 1] + [row]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(buf.getvalue(), self.path)
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch")
        info(f"epoch {epoch + 1}/{trainer.max_epochs} {shown}")

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open() as fh:
            return list(csv.DictReader(fh))


class FiniteLoss(pl.Callback):
    """Stops training with :class:`~vislab.errors.Diverged` once its weights stop being numbers
    (NaN or infinite), before a checkpoint can hold them: a run whose loss became NaN used to
    train on to its end, and its done line read like any other.

    After a batch whose training loss (the step's ``train_loss`` as logged, averaged over the
    processes) is not a number, the weights are checked: a step that left them as they were (a
    float16 overflow the gradient scaler skipped) trains on. Every save checks the weights it
    writes (the last batch of an epoch may break them with a finite loss). The weights are the
    same in every process, so every process decides alike. Reading the loss waits for the
    device: on the CPU every step is read, on an accelerator every ``every``-th step and the last
    batch of each epoch."""

    def __init__(self, every: int = 16) -> None:
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        on_cpu = pl_module.device.type == "cpu"
        if not (on_cpu or (batch_idx + 1) % self.every == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            return
        value = trainer.callback_metrics.get("train_loss_step")
        loss = float("nan") if value is None else float(value)
        if value is not None and not math.isfinite(loss) and not _finite(p for p in pl_module.parameters()):
            raise Diverged(_diverged_words(trainer, f"the training loss became {loss} at epoch "
                                                    f"{trainer.current_epoch + 1}, batch {batch_idx + 1}"))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # the parameters the checkpoint's state_dict holds (a buffer may hold infinities by design: a mask)
        if not _finite(pl_module.parameters()):
            value = trainer.callback_metrics.get("train_loss_step")
            loss = "" if value is None else f" (its last training loss: {float(value):.4g})"
            raise Diverged(_diverged_words(trainer, f"the weights stopped being numbers in epoch "
                                                    f"{trainer.current_epoch + 1}{loss}"))


class ThinBatchNorm(pl.Callback):
    """Says (console and ``record``) when the first training batch leaves a BatchNorm layer fewer
    than ``least`` values per channel (batch x height x width in one process): its statistics are
    then mostly noise (over 2 values each normalised value, before the layer's scale and shift, is
    -1 or +1), and a run from scratch may diverge. Measured: an FPN on tf_efficientnet_lite0 from
    scratch, crops of 32 and batch 2 (the encoder's last BatchNorm layers over 2 values each) had
    weights that were no longer numbers after its second step on one CPU thread.

    Counted: every BatchNorm layer that normalises with the batch's statistics (training mode,
    which ``freeze`` keeps, or no running statistics); a SyncBatchNorm pools its values over the
    processes. Said also when the first batch fails (a BatchNorm over 1 value raises). A compiled
    network (recipe ``compile``) is not looked at: hooks added and removed around its first batch
    would make torch.compile compile it again."""

    def __init__(self, record: Callable[[str], None] | None = None, least: int = 8) -> None:
        self.record = record  # picklable (ddp_spawn)
        self.least = least
        self._seen: list[tuple[int, str, tuple[int, ...]]] | None = None  # (values, layer, input shape)
        self._hooks: list[Any] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        import torch

        if self._seen is not None:
            return
        self._seen = []
        if any(getattr(m, "_compiled_call_impl", None) is not None for m in pl_module.modules()):
            return
        pooled = trainer.world_size
        for name, mod in pl_module.named_modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                share = pooled if isinstance(mod, torch.nn.SyncBatchNorm) else 1

                def look(m: Any, args: tuple, name: str = name, share: int = share) -> None:
                    x = args[0]
                    if (m.training or m.running_mean is None) and x.dim() >= 2:
                        self._seen.append((x.numel() // x.shape[1] * share, name, tuple(x.shape)))
                self._hooks.append(mod.register_forward_pre_hook(look))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._say(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._say(trainer)  # the first batch failed (or a callback before this one stopped it)

    def _say(self, trainer: pl.Trainer) -> None:
        if not self._hooks:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        thin = sorted(s for s in (self._seen or []) if s[0] < self.least)
        if thin and trainer.is_global_zero:
            values, name, shape = thin[0]
            layers = len({layer for _, layer, _ in thin})
            line = (f"warning: {layers} BatchNorm layer(s) normalise each channel over fewer than "
                    f"{self.least} values in a training batch, the fewest {values} ({name}: input "
                    f"{' x '.join(map(str, shape))}); statistics of so few are mostly noise and training may "
                    "diverge: a larger batch_size or training crop/image size (and resize_from, where the "
                    "recipe grows the size) gives them more")
            info(line)
            if self.record is not None:
                self.record(line)


def _finite(tensors: Any) -> bool:
    """Whether every floating-point tensor of ``tensors`` holds numbers only (one wait for the device)."""
    import torch

    flags = [torch.isfinite(t).all() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True


def _diverged_words(trainer: pl.Trainer, what: str) -> str:
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    return (f"training diverged: {what}" + (f" (learning rate {lr:.4g})" if lr is not None else "") +
            "; training stopped there, before a checkpoint held weights that are no longer numbers: "
            "train again with a lower learning rate (--lr)")


class TimeLimit(pl.Callback):
    """The recipe's ``max_minutes``: after an epoch that ends past the limit, training stops (and
    ``stopped`` says so). The limit is per invocation and checked at epoch ends only, so the
    checkpoint holds whole epochs and ``--resume`` continues with the next one (Lightning's
    ``max_time`` stops mid-epoch, saves its elapsed time in the checkpoint and stops a resumed
    run at once)."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self._t0 = time.monotonic()
        self.stopped_after: int | None = None  # the epoch after which the limit stopped training
        self.stopped: str | None = None  # the line that says so, once training has ended

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if done >= (trainer.max_epochs or 0) or (time.monotonic() - self._t0) / 60 < self.minutes:
            return
        self.stopped_after = done
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # written now: a --budget re-plan at the same epoch end may have changed the epochs planned
        if self.stopped_after is not None and self.stopped_after < (trainer.max_epochs or 0):
            self.stopped = (f"max_minutes ({self.minutes:g}) reached after epoch {self.stopped_after} of "
                            f"{trainer.max_epochs}: training stopped before the end of its schedule; "
                            "`--resume` continues it")

    def facts(self) -> dict[str, Any]:
        return {"stopped_early": self.stopped}



class TrainingClock(pl.Callback):
    """The seconds a run has trained, every piece of it: the seconds so far (to the moment of the
    save, mid-epoch checkpoints included) travel in the checkpoints as this callback's state, so
    a resumed run knows what its earlier pieces trained (``facts()["seconds_before"]``). A resumed
    run starts with a line saying where it continues and what it trained before."""

    clock = staticmethod(time.monotonic)

    def __init__(self, record: Callable[[str], None] | None = None) -> None:
        # gets the line a resumed run starts with (the run folder's changes.txt); picklable (ddp_spawn)
        self.record = record
        self._t0 = 0.0
        self.before = 0.0  # seconds trained by the processes before this one (from the checkpoint)
        self.restored = False  # a checkpoint's seconds were loaded (older checkpoints hold none)
        self.spent = 0.0  # seconds trained in all, at the last epoch end
        self._in_epoch = False  # between an epoch's start and end: a save then counts the epoch's time so far

    def state_dict(self) -> dict[str, Any]:
        return {"spent_s": self.before + self.clock() - self._t0 if self._in_epoch else self.spent}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = self.spent = float(state_dict.get("spent_s", 0.0))
        self.restored = "spent_s" in state_dict

    def facts(self) -> dict[str, Any]:
        return {"seconds_before": self.before}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = self.clock()
        self._in_epoch = True  # a run resumed mid-epoch gets no on_train_epoch_start
        where = getattr(pl_module, "resume_words", str)()
        if where and trainer.is_global_zero:
            before = (f"{self.before / 60:.1f} min trained before" if self.restored else
                      "the minutes trained before are not in the checkpoint (an older vislab's)")
            line = f"--resume: continues {where}, {before}{self.left_words()}"
            info(line)
            if self.record is not None:
                self.record(line)

    def left_words(self) -> str:
        """What the resume line adds after the minutes trained before ("": nothing)."""
        return ""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_epoch = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.spent = self.before + self.clock() - self._t0
        self._in_epoch = False


def _so_far(seconds: float) -> str:
    """Training time so far in a budget line: minutes to a tenth, seconds below 0.05 min."""
    minutes = f"{seconds / 60:.1f}"
    return f"{seconds:.2g} s so far" if minutes == "0.0" else f"{minutes} min so far"


class BudgetKeeper(TrainingClock):
    """Holds a ``--budget`` during the run. The epochs were planned from the speed of the first
    steps (:func:`vislab.engine.budget.budget_epochs`); on a machine that slows down later (other
    tenants on shared cores) the run would overrun. After each epoch the epochs left are planned
    again from this run's own seconds per epoch; when fewer fit, the run ends earlier with the
    rest of its learning-rate schedule compressed into them (``replan`` of the module, kept in
    checkpoints), and ``record`` gets the line that says so. When the run goes faster than
    planned (an early epoch shared the cores, or the machine sped up after the budget's probe),
    epochs are added the same way, the rest of the schedule stretched over them, up to ``most``
    (the pipeline passes twice the first plan; for a progressive resize None, so that its
    re-plans only shorten it: more epochs would move its ramp later and its side down again);
    rank 0 decides for every process. Epochs are added at the
    end of an epoch before the last planned one, never after it. When the time left after the
    last whole epoch that fits holds at least ``MIN_SHARE`` of another (equal epochs only, long
    enough to be cut), the run gets that part of one more epoch, its schedule ending at the
    part's last batch (:meth:`partial_end`): a probe that over-estimated the steps no longer
    leaves most of an epoch of the budget unused. Inside the planned last epoch, which no epoch
    end precedes in a run planned as one epoch, the same is decided from the batches' pace
    (:meth:`more_epochs`). A planned part that no longer fits at an epoch end shrinks to what does
    (:meth:`last_part`) rather than leave the learning rate mid-schedule. Until an epoch has ended,
    the held-out pass after it is priced as the plan priced it (``tail``), then as measured.

    Inside an epoch of at least ``MIN_BATCHES`` batches the budget is held too (:meth:`cut_step`,
    from the seconds per batch of its latest tenth, at least ``TIMED`` batches, so that a machine
    that slows down in the middle of a long epoch is seen at once): the planned last epoch
    that would end past ``1 + TOLERANCE`` times the budget ends at the batch where the budget
    runs out, and an earlier epoch after whose end too little of another would fit (less than
    ``MIN_SHARE - HYSTERESIS`` of one, so that a part added at ``MIN_SHARE`` is not taken back and
    added again on a noisy pace) becomes the last; either way the schedule is compressed to end
    there, so a run on a machine that slowed down still ends inside its budget with its learning rate at the schedule's end. The seconds
    trained so far (to the moment of the save, mid-epoch checkpoints included) travel in the
    checkpoints as this callback's state (:class:`TrainingClock`), so a run resumed after an
    interruption is held to what is left of its budget, not to a fresh one."""

    ALLOWANCE = 0.25  # an epoch still starts when three quarters of it fit in the time left
    MIN_SHARE = 0.25  # ... or, when it can be ended early (cut_step), a quarter of it
    MIN_BATCHES = 8  # an epoch of fewer batches is held to the budget at its end only
    TIMED = 3  # batches timed, after the epoch's first (its time holds the loader's start), before a cut
    TOLERANCE = 0.05  # the planned end may pass the budget by this share before the last epoch is cut
    HYSTERESIS = 0.1  # a part of an epoch is added when MIN_SHARE of one fits, taken back below this much less
    KEPT = 0.02  # a plan whose end an epoch's re-plan would move by less than this share of the budget is kept

    def __init__(self, minutes: float, record: Callable[[str], None] | None = None,
                 weights: Callable[[int], list[float]] | None = None, most: int | None = None,
                 tail: float = 0.0) -> None:
        self.minutes = minutes
        self.most = most  # the most epochs a re-plan may plan (None: the epochs planned when it runs)
        self.weights = weights  # relative epoch costs of an n-epoch schedule; None: the module's
        self.epochs_here = 0  # epochs that ended in this process
        self.tail = tail  # seconds from an epoch's last training batch to its end (the held-out pass):
        # the plan's estimate until an epoch ends, then measured
        self._batches = 0  # batches of the current epoch that ended in this process
        self._ends: deque[float] = deque()  # the clock at the latest batch ends (the epoch's first on)
        self._last_batch: float | None = None  # seconds trained at the end of the epoch's last batch
        super().__init__(record)

    def left_words(self) -> str:
        if not self.restored:
            return f"; --budget {self.minutes:g} min, counted from now"
        return f"; --budget {self.minutes:g} min: {max(0.0, self.minutes - self.before / 60):.1f} min left"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tail_s": self.tail}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.tail = float(state_dict.get("tail_s", 0.0))

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "budget_epochs_here": self.epochs_here}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = 0  # a run resumed mid-epoch times the batches it trains
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches, self._last_batch = 0, None
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        step, stop = pl_module.schedule_step, getattr(pl_module, "stop_step", None)
        if stop is not None and step >= stop:  # a cut epoch's end (also after a resume)
            trainer.should_stop = True
            return
        batches = int(trainer.num_training_batches)
        if batches < self.MIN_BATCHES:
            return
        self._batches += 1
        window = max(self.TIMED, batches // 10)  # batches timed: the epoch's latest tenth
        if self._batches == 1:
            self._ends = deque(maxlen=window + 1)
        now = self.clock()
        self._ends.append(now)
        if self._batches - 1 < window:
            return
        elapsed, pace = self.before + now - self._t0, max((now - self._ends[0]) / window, 1e-6)  # a coarse clock: > 0
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # of this epoch
        self._last_batch = elapsed if done >= batches else None
        # a stop in this epoch (a cut) ends it there; one in a later epoch (a partial last epoch) does not
        early = stop is not None and stop - step < batches - done
        left = stop - step if early else batches - done
        planned, epoch = int(trainer.max_epochs or 0), trainer.current_epoch + 1
        end = self.cut_step(step, left, elapsed, pace, epoch >= planned, batches) if left > 0 else None
        more = None  # the planned last epoch ends with time for more: (epochs, the step the last ends at or None)
        if end is None and epoch >= planned and left > 0 and (stop is None or early):
            more = self.more_epochs(pl_module, epoch, self.minutes * 60 - (elapsed + left * pace + self.tail),
                                    pace, batches, cut=batches - done - left, ends_at=step + left, least=window)
        end, more = trainer.strategy.broadcast((end, more), src=0)
        if more is not None:
            pl_module.replan(*more)  # type: ignore[operator]
            ends = f"with epoch {more[0]}" if more[1] is None else \
                f"after batch {more[1] - pl_module.steps_per_epoch * (more[0] - 1)} of epoch {more[0]}"
            self._say(trainer, f"--budget {self.minutes:g} min: in epoch {epoch} of {planned}, at batch {done} of "
                               f"{batches} ({_so_far(elapsed)}, {pace:.3g} s per batch over its last {window} batches: "
                               f"faster than planned), the run and its learning-rate schedule now end {ends}" +
                               (f" instead of batch {done + left}" if early else ""), longer=True)
        if end is None:
            return
        pl_module.replan(epoch, end_step=end if end - step < batches - done else None)  # type: ignore[operator]
        ends = done + end - step  # the batch of this epoch it ends with
        line = (f"--budget {self.minutes:g} min: in epoch {epoch} of {planned}, at batch {done} of {batches} "
                f"({_so_far(elapsed)}, {pace:.3g} s per batch over its last {window} batches: slower than planned), the "
                "run and its learning-rate schedule now end " +
                (f"with epoch {epoch}" if ends >= batches else f"after batch {ends} of epoch {epoch}") +
                (f" instead of batch {done + left}" if early else ""))
        self._say(trainer, line)
        if end <= step:
            trainer.should_stop = True

    def cut_step(self, step: int, left: int, elapsed: float, pace: float, last: bool, batches: int) -> int | None:
        """The step (:attr:`schedule_step`'s count) at which the current epoch must end for the run
        to keep its budget, or None: for the planned last epoch (``last``), when its end (``left``
        more batches at ``pace`` seconds each, then the held-out pass as long as the last one)
        passes ``1 + TOLERANCE`` times the budget; for an earlier one, when less than
        ``MIN_SHARE`` of another epoch (``batches`` batches) would fit after its end. The step
        is where the budget runs out, at most the epoch's end."""
        budget = self.minutes * 60
        end = elapsed + left * pace + self.tail
        if last and end <= (1 + self.TOLERANCE) * budget:
            return None
        if not last and budget - end - self.tail >= (self.MIN_SHARE - self.HYSTERESIS) * batches * pace:
            return None  # a part of another epoch fits (as at the epoch's end, a held-out pass after it)
        return step + max(0, min(left, int((budget - elapsed - self.tail) // pace)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done, planned = trainer.current_epoch + 1, int(trainer.max_epochs or 0)
        super().on_train_epoch_end(trainer, pl_module)
        elapsed = self.spent
        if self._last_batch is not None:  # the held-out pass (and the checkpoints before it)
            self.tail = max(0.0, elapsed - self._last_batch)
        self.epochs_here += 1
        if done >= planned:
            return
        per_epoch = elapsed / done
        cap = max(planned, self.most or planned)
        batches = int(getattr(trainer, "num_training_batches", 0) or 0)
        can_cut = batches >= self.MIN_BATCHES
        stop = getattr(pl_module, "stop_step", None)  # set here before: the planned last epoch is partial
        spe = int(getattr(pl_module, "steps_per_epoch", 0) or 0)
        partial = can_cut and spe > 0 and self._equal_epochs(pl_module, cap + 1)
        whole = planned - 1 if stop is not None else planned  # the plan's whole epochs
        epochs = self.epochs_that_fit(pl_module, done, max(whole, done), elapsed, cap, can_cut=can_cut and not partial)
        end = self.partial_end(epochs, cap, done, elapsed, batches, spe) if partial else None
        if partial and end is None and epochs == done:  # ending now would leave the learning rate mid-schedule:
            end = self.last_part(done, elapsed, batches, spe)  # a part of whatever fits ends it, if anything does
        if spe > 0 and self._near_plan(end if end is not None else epochs * spe, stop or planned * spe, spe, per_epoch):
            epochs, end = planned - (stop is not None), stop  # kept, not re-planned
        epochs, end = trainer.strategy.broadcast((epochs + (end is not None), end), src=0)
        if (epochs, end) == (planned, stop):
            return
        if end is None:
            pl_module.replan(epochs)  # type: ignore[operator]
        else:
            pl_module.replan(epochs, end_step=end)  # type: ignore[operator]
        ends = "training ends now" if epochs == done else f"the learning-rate schedule now ends with epoch {epochs}"
        if end is not None:
            ends = f"the learning-rate schedule now ends after batch {end - spe * (epochs - 1)} of epoch {epochs}"
        longer = (epochs, end or epochs * spe) > (planned, stop or planned * spe)  # in epochs, then steps
        pace = "faster than planned" if longer else "slower than planned"
        each = f"{per_epoch:.0f}" if per_epoch >= 1 else f"{per_epoch:.2g}"
        def plan(n: int, stop_at: int | None) -> str:  # "3", or "3 + 122 batches" with a partial last epoch
            return f"{n}" if stop_at is None else f"{n - 1} + {stop_at - spe * (n - 1)} batches"

        self._say(trainer, f"--budget {self.minutes:g} min: epochs {plan(planned, stop)} -> {plan(epochs, end)} after "
                           f"epoch {done} ({_so_far(elapsed)}, {each} s per epoch: {pace}); {ends}", longer=longer)

    def _near_plan(self, new: int, old: int, steps: int, per_epoch: float) -> bool:
        """Whether a re-plan at an epoch's end to end at step ``new`` instead of ``old`` moves the end
        by less than a tenth of an epoch (of ``steps`` steps, ``per_epoch`` seconds) or less than
        ``KEPT`` of the budget: such a plan is kept. On short epochs each epoch's end would
        otherwise move it a batch or three this way or that, a line each."""
        if new == old:
            return True
        step_s = max(per_epoch / steps, 1e-6)
        return abs(new - old) < max(0.1 * steps, self.KEPT * self.minutes * 60 / step_s)

    def _say(self, trainer: pl.Trainer, line: str, *, longer: bool = False) -> None:
        """A re-plan's line on the console (a warning when the run ends earlier than planned, a setting
        when it trains longer) and in the run folder's changes.txt (rank 0)."""
        info(f"{'setting' if longer else 'warning'}: {line}")
        if trainer.is_global_zero and self.record is not None:
            self.record(line)

    def _equal_epochs(self, pl_module: pl.LightningModule, epochs: int) -> bool:
        """Whether every epoch of a schedule of ``epochs`` costs the same (not a progressive resize)."""
        weights = (self.weights or getattr(pl_module, "epoch_weights", lambda n: [1.0] * n))(epochs)
        return max(weights) == min(weights)

    def partial_end(self, epochs: int, cap: int, done: int, elapsed: float, batches: int, steps: int) -> int | None:
        """At an epoch end, the step at which a partial epoch after ``epochs`` whole ones ends, so
        that the run fills its budget (the time left after them in batches at this run's pace so
        far, :meth:`part`), or None: no such part, or one past ``cap`` epochs. Without it a run
        whose probe over-estimated its steps ends a large part of an epoch early."""
        unit = elapsed / done  # seconds per epoch so far (equal epochs), held-out pass included
        extra = self.part(self.minutes * 60 - elapsed - unit * (epochs - done), self._batch_pace(elapsed, done, batches),
                          batches)
        return None if extra is None or epochs + 1 > cap else steps * epochs + extra

    def last_part(self, done: int, elapsed: float, batches: int, steps: int) -> int | None:
        """At the end of epoch ``done``, where the plan had more but no ``MIN_SHARE`` of an epoch fits
        any more: the step at which a part of one more epoch, of the batches that fit before the
        budget with a held-out pass after them, ends; None when not one fits. Its learning-rate
        schedule is compressed into them instead of stopping at the rate it has now."""
        pace = self._batch_pace(elapsed, done, batches)
        room = self.minutes * 60 - elapsed - self.tail
        extra = min(batches - 1, int(room // pace)) if room > 0 else 0
        return steps * done + extra if extra >= 1 else None

    def _batch_pace(self, elapsed: float, done: int, batches: int) -> float:
        """Seconds per training batch at an epoch end: ``done`` equal epochs of ``batches`` batches in
        ``elapsed`` seconds, each less its held-out pass."""
        return max(elapsed / done - self.tail, 1e-9) / batches

    def part(self, room: float, pace: float, batches: int) -> int | None:
        """The batches of a partial epoch in ``room`` seconds at ``pace`` seconds per batch, less a
        held-out pass as long as the last one; None when shorter than ``MIN_SHARE`` of an epoch of
        ``batches`` batches or as long as a whole one."""
        extra = int((room - self.tail) // pace) if room > self.tail else 0
        return extra if self.MIN_SHARE * batches <= extra < batches else None

    def more_epochs(self, pl_module: pl.LightningModule, epoch: int, room: float, pace: float, batches: int, *,
                    cut: int = 0, ends_at: int = 0, least: int = 1) -> tuple[int, int | None] | None:
        """Inside the planned last epoch (``epoch``), which will end with ``room`` seconds of the
        budget left: first the ``cut`` batches an earlier cut took from it (the epoch now ends at
        step ``ends_at``), as many as fit, at least ``least`` unless all; then the epochs that fit
        after it, whole ones and then a part (:meth:`part`), up to ``most`` (equal epochs only).
        Returns (epochs, the step the last one ends at, or None when it is whole), or None when
        nothing fits. A run planned as one epoch (a short budget) gets no epoch-end re-plan before
        its end, where its learning rate is spent: here it gets the time its probe over-estimated;
        and a cut made while the cores were shared is undone when they are free again."""
        steps = int(getattr(pl_module, "steps_per_epoch", 0) or 0)
        if steps <= 0:
            return None
        if cut > 0:
            back = min(cut, int(room // pace)) if room > 0 else 0
            if back < cut:
                return (epoch, ends_at + back) if back >= least else None
            room -= cut * pace
        cap = max(epoch, self.most or epoch)
        grow = cap > epoch and self._equal_epochs(pl_module, cap + 1)
        epochs, whole = epoch, batches * pace + self.tail
        while grow and epochs < cap and room >= whole:
            epochs, room = epochs + 1, room - whole
        extra = self.part(room, pace, batches) if grow and epochs < cap else None
        if extra is not None:
            return epochs + 1, steps * epochs + extra
        return (epochs, None) if epochs > epoch or cut > 0 else None

    def epochs_that_fit(self, pl_module: pl.LightningModule, done: int, planned: int, elapsed: float,
                        cap: int | None = None, *, can_cut: bool = False) -> int:
        """The most epochs in [done, cap (default: planned)] whose rest fits in the time left, each
        epoch costed by this run's speed so far in relative epoch costs for a schedule of that many epochs (the
        ``weights`` given, as the budget's plan timed them, else the module's ``epoch_weights``:
        equal epochs, or a progressive resize's pixels); the last epoch still starts when three
        quarters of it fit, but an epoch beyond ``planned`` is added only when it fits whole. When
        no epoch fits so, one more starts when a quarter of it fits and ``can_cut`` (its epochs
        are long enough for :meth:`cut_step` to end it where the budget runs out)."""
        weights = self.weights or getattr(pl_module, "epoch_weights", lambda n: [1.0] * n)
        unit = elapsed / max(sum(weights(planned)[:done]), 1e-9)  # seconds per unit: the epochs ran as planned
        left = self.minutes * 60 - elapsed
        for epochs in range(cap or planned, done, -1):
            w = weights(epochs)
            # epochs beyond the plan must fit whole: added on the allowance, the next re-plan took them back
            slack = self.ALLOWANCE * unit * w[-1] if epochs <= planned else 0.0
            if unit * sum(w[done:]) <= left + slack:
                return epochs
        if can_cut and left >= self.MIN_SHARE * unit * weights(done + 1)[done]:
            return done + 1  # an epoch that will end where the budget does (on_train_batch_end)
        return done
