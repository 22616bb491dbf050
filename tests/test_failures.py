"""The failure paths a new user hits (issue #14): nothing lost, one line, exit code 2.

Every run here is tiny (parts 1 and 2, 32x16 inputs, one batch per epoch), and where only the
record matters (not what was learnt) the epochs and evaluations are stand-ins, so the file stays fast.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from canlib.__main__ import main
from canlib.config import ConfigError, load_config
from canlib.data import StatisticsMismatchWarning, load_dataset
from canlib.engine import run_folder
from canlib.engine import trainer as trainer_module
from canlib.engine.trainer import CHECKPOINT, Trainer, TrainingDiverged, train

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
TINY = [
    "model.parts=[1,2]",
    "data.height=32",
    "data.width=16",
    "model.embed_dim=16",
    "train.max_batches_per_epoch=1",
    "optim.epochs=1",
]


@pytest.fixture(autouse=True)
def quick_record(monkeypatch):
    """run.json without git and library versions (subprocesses and imports that no test here looks at)."""
    monkeypatch.setattr(run_folder, "run_record", lambda cfg, device=None: {"seed": cfg["seed"]})


def _stand_in_epoch(self, epoch: int) -> dict:
    return {"epoch": epoch, "lr": 0.1, "loss_total": 1.0, "images": 8, "seconds": 0.1, "images_per_s": 80.0}


def _stand_in_evaluate(self) -> dict:
    return {"mAP": 0.5, "rank1": 0.5, "mINP": 0.25, "cmc": [0.5, 1.0]}


@pytest.fixture()
def stand_ins(monkeypatch):
    """Epochs and evaluations that take no time, for tests of what is recorded when."""
    monkeypatch.setattr(Trainer, "train_one_epoch", _stand_in_epoch)
    monkeypatch.setattr(Trainer, "evaluate", _stand_in_evaluate)
    with warnings.catch_warnings():  # no optimiser step before the scheduler's
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        yield


def tiny_cfg(root: Path, *overrides: str) -> dict:
    return load_config(SMOKE, [f"data.root={root}", *TINY, *overrides])


def cli(caplog, *args: str) -> tuple[int, list[str]]:
    """Run ``python -m canlib`` in-process; the exit code and the ERROR lines it logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([*args])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def train_args(root: Path, out: Path, *overrides: str, flags: tuple[str, ...] = ()) -> list[str]:
    return [
        "train",
        "--config",
        str(SMOKE),
        "--data-root",
        str(root),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *flags,
        *TINY,
        *overrides,
    ]


def one_line(code: int, errors: list[str], *words: str) -> None:
    """Exit code 2 and a single one-line error naming ``words``."""
    assert code == 2, errors
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0], errors
    for word in words:
        assert word in errors[0], (word, errors[0])


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def log_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    """A finished one-epoch run (copy it before changing it)."""
    run = tmp_path_factory.mktemp("failures") / "finished"
    train(tiny_cfg(tiny_data), run, device="cpu")
    return run


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture()
def data_copy(tiny_data, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


# ---------------------------------------------------------------- 1. a finished run is never destroyed
def test_a_folder_holding_a_run_is_refused_and_left_intact(tiny_data, run_copy, caplog):
    before = snapshot(run_copy)
    code, errors = cli(caplog, *train_args(tiny_data, run_copy))
    one_line(code, errors, str(run_copy), "--resume", "--overwrite")
    # --overwrite with an input too short for part 5: refused before anything is written
    code, errors = cli(
        caplog, *train_args(tiny_data, run_copy, "model.parts=[1,5]", "data.height=40", flags=("--overwrite",))
    )
    one_line(code, errors, "data.height=40", "part5")
    assert snapshot(run_copy) == before


def test_overwrite_replaces_the_run(tiny_data, run_copy, caplog, stand_ins):
    code, errors = cli(caplog, *train_args(tiny_data, run_copy, flags=("--overwrite",)))
    assert code == 0, errors
    assert [json.loads(x)["loss_total"] for x in (run_copy / "log.jsonl").read_text().splitlines()] == [1.0]
    assert json.loads((run_copy / "metrics.json").read_text())["mAP"] == 0.5  # the stand-in's


def test_checks_come_before_the_first_write(tiny_data, tmp_path, caplog, monkeypatch):
    out = tmp_path / "new-run"
    code, errors = cli(caplog, *train_args(tiny_data, out, "model.parts=[1,5]", "data.height=40"))
    one_line(code, errors, "data.height=40")
    assert not out.exists()
    # an output folder that cannot be created is found before the data set is even read
    monkeypatch.setattr(trainer_module, "build_dataset", lambda cfg: pytest.fail("data set built first"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, errors = cli(caplog, *train_args(tiny_data, blocker / "run"))
    one_line(code, errors, "output folder", str(blocker))


def test_a_read_only_output_folder_is_found_first(tiny_data, tmp_path, caplog, monkeypatch):
    """/proc refuses new files to every user, root included (CI runs as root, where a chmod binds nobody)."""
    monkeypatch.setattr(trainer_module, "build_dataset", lambda cfg: pytest.fail("data set built first"))
    locked = Path("/proc/self")
    assert locked.is_dir()
    code, errors = cli(caplog, *train_args(tiny_data, locked / "run"))
    one_line(code, errors, "cannot write", str(locked))
    assert not (locked / "run").exists()


# ---------------------------------------------------------------- 2. the log always matches the checkpoint
class Killed(BaseException):
    """Stands for the process dying: nothing catches it on the way out."""


def _kill_at(monkeypatch, method: str, call: int, after: bool = False) -> None:
    real = getattr(Trainer, method)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call and not after:
            raise Killed(method)
        out = real(self, *args, **kwargs)
        if calls["n"] == call:
            raise Killed(method)
        return out

    monkeypatch.setattr(Trainer, method, wrapper)


@pytest.mark.parametrize(
    "method,call,after",
    [
        ("train_one_epoch", 2, False),  # while training epoch 2
        ("evaluate", 1, False),  # during the evaluation in the middle (after epoch 1)
        ("save_checkpoint", 1, False),  # epoch 1 logged, its checkpoint not yet written
        ("save_checkpoint", 1, True),  # just after the checkpoint of epoch 1
        ("save_checkpoint", 2, False),  # the last epoch logged, its checkpoint not yet written
    ],
)
def test_a_kill_at_any_point_leaves_a_consistent_record(
    tiny_data, tmp_path, monkeypatch, stand_ins, method, call, after
):
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_data, "optim.epochs=2", "train.eval_every=1")
    with monkeypatch.context() as patch:
        _kill_at(patch, method, call, after)
        with pytest.raises(Killed):
            train(cfg, run, device="cpu")
    if (run / CHECKPOINT).is_file():  # every epoch up to the checkpoint's has its line
        saved = torch.load(run / CHECKPOINT, weights_only=True)["epoch"]
        assert set(range(1, saved + 1)) <= set(log_epochs(run))
    train(cfg, run, device="cpu", resume=True)
    assert log_epochs(run) == [1, 2]
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert "mAP" in lines[0]["eval"]  # the evaluation in the middle is kept
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 2


_KILL_SCRIPT = """
import os, signal, sys
from canlib.config import load_config
from canlib.engine import run_folder
from canlib.engine.trainer import Trainer, train
Trainer.train_one_epoch = lambda self, epoch: {"epoch": epoch, "images_per_s": 1.0}
Trainer.evaluate = lambda self: {"mAP": 0.5, "rank1": 0.5, "mINP": 0.25}
run_folder.run_record = lambda cfg, device=None: {}
real = Trainer.save_checkpoint
def save(self):
    if self.epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, just before the checkpoint of epoch 2
    return real(self)
Trainer.save_checkpoint = save
train(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2], device="cpu")
"""


def test_a_real_kill_before_the_checkpoint_keeps_the_log_consistent(tiny_data, tmp_path, stand_ins):
    """A SIGKILL (no clean-up at all) in the window between an epoch's log line and its checkpoint."""
    run = tmp_path / "run"
    overrides = [f"data.root={tiny_data}", *TINY, "optim.epochs=2"]
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(SMOKE), str(run), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert torch.load(run / CHECKPOINT, weights_only=True)["epoch"] == 1 and log_epochs(run) == [1, 2]
    train(load_config(SMOKE, overrides), run, device="cpu", resume=True)
    assert log_epochs(run) == [1, 2]


# ---------------------------------------------------------------- 3 and 4. one line, exit code 2, early
@pytest.mark.parametrize(
    "override,words",
    [
        ("data.dataset=imagenet", ["data.dataset", "market1501", "imagenet"]),
        ("model.parts=5", ["model.parts", "5"]),
        ("model.parts=abc", ["model.parts", "abc"]),
        ("eval.metric=foo", ["eval.metric", "cosine", "foo"]),
        ("optim.lr=abc", ["optim.lr", "number", "abc"]),
        ("model.parts=[1,3", ["model.parts=[1,3", "YAML"]),
    ],
)
def test_bad_values_are_named_at_load_time(tiny_data, tmp_path, caplog, override, words):
    code, errors = cli(caplog, *train_args(tiny_data, tmp_path / "run", override))
    one_line(code, errors, *words)
    assert not (tmp_path / "run").exists()


def test_config_values_are_checked_by_type_and_choice():
    cfg = load_config(SMOKE, ["optim.lr=1e-4", "data.dataset=Market1501"])  # "1e-4": text to YAML 1.1
    assert cfg["optim"]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match=r"optim.epochs must be an integer; got 2.5"):
        load_config(SMOKE, ["optim.epochs=2.5"])
    with pytest.raises(ConfigError, match=r"2 problems: .*data.p.*train.amp"):
        load_config(SMOKE, ["train.amp=fp32", "data.p=1"])
    with pytest.raises(ConfigError, match=r"model.pooling must be one of paper, adaptive"):
        load_config(SMOKE, ["model.pooling=max"])


def test_a_yaml_syntax_error_names_the_file_and_line(tiny_data, tmp_path, caplog):
    profile = tmp_path / "broken.yaml"
    profile.write_text(f"base: {SMOKE}\noptim:\n  lr: [0.1\n  epochs: 2\n")
    code, errors = cli(
        caplog, "train", "--config", str(profile), "--data-root", str(tiny_data), "--output", str(tmp_path / "run")
    )
    one_line(code, errors, str(profile), "line 4")


def test_a_corrupt_query_image_stops_the_run_before_training(data_copy, tmp_path, caplog):
    bad = sorted((data_copy / "query").glob("*.jpg"))[0]
    bad.write_bytes(b"")
    code, errors = cli(caplog, *train_args(data_copy, tmp_path / "run"))
    one_line(code, errors, bad.name, "data.verify_images")
    assert not (tmp_path / "run" / CHECKPOINT).exists()
    # with the check off, the trainer is built and the damaged file is still in its query set (so
    # it is the check, not the reader, that found it above)
    trainer = Trainer.from_config(tiny_cfg(data_copy, "data.verify_images=false"), tmp_path / "run", device="cpu")
    assert str(bad) in {str(path) for path, _, _ in trainer.dataset.query}


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_checkpoint_is_one_line(tiny_data, run_copy, caplog, damage):
    ckpt = run_copy / CHECKPOINT
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    code, errors = cli(caplog, "evaluate", "--run", str(run_copy), "--device", "cpu")
    one_line(code, errors, "last.pt")
    code, errors = cli(caplog, *train_args(tiny_data, run_copy, flags=("--resume",)))
    one_line(code, errors, "last.pt")


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tiny_data, tmp_path, caplog, monkeypatch, stand_ins):
    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return _stand_in_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", interrupted)
    run = tmp_path / "run"
    code, errors = cli(caplog, *train_args(tiny_data, run, flags=("--epochs", "2")))
    assert code == 130 and len(errors) == 1, errors
    assert "end of epoch 1" in errors[0] and str(run / CHECKPOINT) in errors[0]
    assert "--resume" in errors[0] and "--epochs 2" in errors[0]


def test_a_failed_final_evaluation_keeps_the_training(tiny_data, tmp_path, caplog, monkeypatch, stand_ins):
    from canlib.data import ImageReadError

    def broken(self):
        raise ImageReadError("cannot read image 'query/0001_c1s1_000001_00.jpg': truncated")

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "evaluate", broken)
        code, errors = cli(caplog, *train_args(tiny_data, run))
    one_line(code, errors, "0001_c1s1_000001_00.jpg", "evaluate --run", str(run / CHECKPOINT))
    assert (run / CHECKPOINT).is_file() and not (run / "metrics.json").exists()
    code, _ = cli(caplog, *train_args(tiny_data, run, flags=("--resume",)))  # only evaluates
    assert code == 0 and log_epochs(run) == [1] and (run / "metrics.json").is_file()


# ---------------------------------------------------------------- 5. the same data at another spelling
def test_resume_accepts_the_same_data_at_another_path(tiny_data, run_copy, data_copy, caplog, monkeypatch, stand_ins):
    monkeypatch.chdir(tiny_data.parent)
    code, errors = cli(caplog, *train_args(Path(tiny_data.name + "/"), run_copy, flags=("--resume",)))
    assert code == 0, errors
    code, errors = cli(caplog, *train_args(data_copy, run_copy, flags=("--resume",)))  # the data moved
    assert code == 0, errors
    next((data_copy / "bounding_box_train").glob("*.jpg")).unlink()  # ... but must still be the same
    with pytest.warns(StatisticsMismatchWarning):  # the generator's recorded counts differ too
        code, errors = cli(caplog, *train_args(data_copy, run_copy, flags=("--resume",)))
    one_line(code, errors, "train_images", str(data_copy))


@pytest.mark.parametrize("record", ["config.yaml", "run.json"])
def test_resume_refuses_a_run_recorded_in_an_older_format(tiny_data, run_copy, caplog, record):
    """A record lacking what canlib writes now (a configuration key, the data statistics) is refused."""
    if record == "config.yaml":
        cfg = yaml.safe_load((run_copy / record).read_text())
        del cfg["train"]["sync_bn"]
        (run_copy / record).write_text(yaml.safe_dump(cfg, sort_keys=False))
        words = ["lacks", "train.sync_bn", "older canlib"]
    else:
        meta = json.loads((run_copy / record).read_text())
        del meta["data"]
        (run_copy / record).write_text(json.dumps(meta))
        words = ["no data statistics", "older canlib"]
    before = snapshot(run_copy)
    code, errors = cli(caplog, *train_args(tiny_data, run_copy, flags=("--resume",)))
    one_line(code, errors, str(run_copy), *words)
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------- 6. smaller ones
def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(tiny_data, tmp_path):
    trainer = Trainer.from_config(tiny_cfg(tiny_data), tmp_path / "run", device="cpu")
    real = trainer.loss.forward

    def poisoned(*args, **kwargs):
        total, terms = real(*args, **kwargs)
        return total * float("nan"), terms

    trainer.loss.forward = poisoned
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet") as info:
        trainer.fit()
    assert "end of epoch 0" not in str(info.value)


def test_a_failed_checkpoint_write_names_the_path(tiny_data, tmp_path, caplog, monkeypatch, stand_ins):
    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    code, errors = cli(caplog, *train_args(tiny_data, run))
    one_line(code, errors, str(run / CHECKPOINT), "No space left")


def test_market_names_must_match_whole(tmp_path):
    tree = {
        "bounding_box_train": [
            "0001_c1s1_000151_01.jpg",
            "0001_c2s1_000152_01.jpg",
            "0001_c1s1_000151_01 copy.jpg",
            "0002_c1s1_000153_01(1).jpg",
        ],
        "query": ["0003_c1s1_000154_01.jpg"],
        "bounding_box_test": ["0003_c2s1_000155_01.jpg"],
    }
    for folder, names in tree.items():
        (tmp_path / folder).mkdir()
        for name in names:
            Image.new("RGB", (4, 8)).save(tmp_path / folder / name, format="JPEG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("folder", tmp_path)
    assert len(ds.train) == 2
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 1 and "skipped 2 file(s)" in skipped[0] and "copy.jpg" in skipped[0]


def test_a_loader_workers_error_becomes_its_own_message():
    from torch._utils import ExceptionWrapper

    from canlib.data import ImageReadError
    from canlib.engine.trainer import error_line

    try:
        raise ImageReadError("cannot read image 'query/0001_c1s1_000001_00.jpg': truncated")
    except ImageReadError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")  # what a worker sends back
    with pytest.raises(ImageReadError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)
    assert error_line(info.value) == "cannot read image 'query/0001_c1s1_000001_00.jpg': truncated"
