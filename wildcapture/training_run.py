"""The files of a training stage (1 or 3) while it runs: resumable, and committed only when it finishes.

Checkpoints and the log of a run go to `<out>/.<stage>.incomplete/` (see `wildcapture.storage.Staging`); the
previous complete run in `<out>` stays untouched until this one finishes. `train.resume=true`
continues a killed run from its staged `last.pth`, or extends the complete run from `<out>/last.pth`,
and refuses a config that changes the model or its optimisation; it prints `resuming at epoch N/E`
(N counted from 1, as the epoch lines count).

A run that fails with an exception inside `TrainingRun.hold` (a bad value found late, a non-finite loss, a
bug, Ctrl-C) keeps its staging folder only if it holds a `last.pth` (an epoch completed, or the killed run
being resumed), and says that `train.resume=true` continues from it; otherwise, e.g. when it fails before
its first epoch completes, the staging folder goes, and so does `<out>` if the run created it. A killed run
(kill -9) leaves its staging folder as it is, for `train.resume=true`.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from wildcapture.errors import ConfigError
from wildcapture.storage import Staging
from wildcapture.provenance import check_resume_config
from wildcapture.run_lock import hold_lock
from wildcapture.storage import load_checkpoint, save_checkpoint, write_text

LOG_NAME = "log.jsonl"
CARRIED_OVER = ("best.pth", LOG_NAME)  # what a resumed complete run keeps from its folder


def epoch_summary(epoch: int, epochs: int, values: dict[str, float], seconds: float) -> str:
    """Return the line printed after an epoch, e.g. "epoch 12/60  train_loss 0.213  val_acc 0.962  best 0.970
    4.1 s": `epoch` counted from 0 is shown from 1, values rounded to 3 significant digits, seconds to 0.1."""
    def short(value: float) -> str:
        text = f"{value:#.3g}"
        return text[:-1] if text.endswith(".") else text

    return "  ".join([f"epoch {epoch + 1}/{epochs}", *(f"{k} {short(v)}" for k, v in values.items()),
                      f"{seconds:.1f} s"])


def run_outputs(out: Path, stage: str, *extra: str) -> list[Path]:
    """The files a training run of `stage` writes in `out`: the checkpoints, its config, its log, `extra`, then
    the completion marker last."""
    return [Path(out) / name for name in ("best.pth", "last.pth", "config.yaml", LOG_NAME, *extra,
                                          _marker(stage))]


def _marker(stage: str) -> str:
    return f"{stage}.complete.yaml"


class TrainingRun:
    """One run of a training stage writing `out`."""

    def __init__(self, out: Path, stage: str):
        self.out = Path(out)
        self.staging = Staging(self.out, stage, _marker(stage))

    def start(self, cfg: dict[str, Any], free_keys: set[str], prepare: bool = True) -> dict[str, Any] | None:
        """Return the checkpoint to resume from, or None to start afresh; with `prepare` (the process
        that writes) also set up the staging folder.

        With `train.resume=true`: a killed run's staged `last.pth` first, else the complete run's
        `last.pth`. The resumed checkpoint's config must equal `cfg` except for `free_keys`
        (ConfigError naming the key otherwise). Without it, a killed run's leftovers are discarded.
        """
        staged_last, final_last = self.staging.dir / "last.pth", self.out / "last.pth"
        source = None
        if cfg["train"]["resume"]:
            source = staged_last if staged_last.is_file() else final_last if final_last.is_file() else None
            if source is None and prepare:
                print(f"train.resume=true but there is no last.pth in {self.out}: starting from epoch 0", flush=True)
        elif staged_last.is_file() and prepare:
            print(f"note: discarding the unfinished run in {self.staging.dir} (train.resume=true would continue it)",
                  flush=True)
        if source is None:
            if prepare:
                self.staging.reset()
            return None
        state = load_checkpoint(source)
        check_resume_config(state.get("config", {}), cfg, free_keys, source)
        if state["epoch"] + 1 >= cfg["train"]["epochs"]:
            raise ConfigError(f"train.resume=true, but {source} already finished epoch {state['epoch']} of "
                              f"train.epochs={cfg['train']['epochs']}: raise train.epochs to train longer")
        if prepare:
            if source == final_last:
                self.staging.reset()
                for name in CARRIED_OVER:
                    if (self.out / name).is_file():
                        shutil.copy2(self.out / name, self.staging.path(name))
            self._truncate_log(state["epoch"])
            print(f"resuming at epoch {state['epoch'] + 2}/{cfg['train']['epochs']} from {source}", flush=True)
        return state

    def _truncate_log(self, last_epoch: int) -> None:
        """Keep the log lines of epochs <= last_epoch (a killed run may have logged the epoch it lost)."""
        path = self.staging.dir / LOG_NAME
        if path.is_file():
            lines = [line for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and json.loads(line).get("epoch", -1) <= last_epoch]
            write_text(path, "".join(line + "\n" for line in lines))

    def log(self, record: dict[str, Any], summary: str) -> None:
        """Append `record` as one JSON line (full precision) to the run's log and print `summary`, its
        short form (`epoch_summary`), above any progress bars."""
        with open(self.staging.path(LOG_NAME), "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        tqdm.write(summary)

    def save(self, name: str, checkpoint: dict[str, Any]) -> None:
        """Write checkpoint `name` (e.g. best.pth) of the run, atomically."""
        save_checkpoint(checkpoint, self.staging.path(name))

    def path(self, name: str) -> Path:
        """Where the run writes its file `name` (e.g. config.yaml) before the commit."""
        return self.staging.path(name)

    def commit(self, marker: dict[str, Any]) -> dict[str, Any]:
        """Move the run's files into `out`, then write its completion marker; returns the marker."""
        return self.staging.commit(marker)

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator["TrainingRun"]:
        """Hold the run lock of `out` (`what` names the run, see `wildcapture.run_lock`) for the `with` block;
        yields self. If the block raises, keep the staged run only if it can be resumed (see the module)."""
        with hold_lock(self.out, what):  # which removes the folders it made if the run leaves them empty
            try:
                yield self
            except BaseException:
                self._clean_up_failure()
                raise

    def _clean_up_failure(self) -> None:
        """After an exception: keep a staging folder holding a `last.pth` (and say so), else remove it."""
        if (self.staging.dir / "last.pth").is_file():
            print(f"note: the unfinished run stays in {self.staging.dir}: train.resume=true continues it from its "
                  "last completed epoch", flush=True)
            return
        shutil.rmtree(self.staging.dir, ignore_errors=True)
