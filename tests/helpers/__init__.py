"""Test helpers: the shared AFQMC data, Hydra composition, real short trainings into tmp_path, MLflow services."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
AFQMC = Path(os.environ.get("AFQMC_DATA", REPO.parent / "shared" / "data" / "afqmc"))
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}
PYTHON = sys.executable


def require(request, available: bool, message: str) -> None:
    """A test that needs something this machine may lack (the AFQMC data, PostgreSQL, Chromium): skipped, saying
    what it needs, in the fast suite (which runs anywhere); failed under ``--slow`` (CI, which provides all of
    them), so a missing service never passes as a skip."""
    import pytest

    if available:
        return
    if request.config.getoption("--slow"):
        pytest.fail(f"{message} (--slow runs every test: provide it, as .ci/run does)")
    pytest.skip(message)


def run_command(args: list, cwd: Path | None = None, timeout: float = 900, env: dict | None = None):
    """A command as a user types it (offline), its output captured as text; this project's commands are forked
    from a process that has imported their libraries already (``prewarmed``)."""
    from . import prewarmed

    return prewarmed.run(args, cwd=cwd, env=env or OFFLINE, timeout=timeout)


def launch(args: list, cwd: Path | None = None, env: dict | None = None, **streams):
    """``subprocess.Popen`` of a command as a user types it (offline), as ``run_command`` runs it."""
    from . import prewarmed

    return prewarmed.launch(args, cwd=cwd, env=env or OFFLINE, **streams)


# MiniLM's tokenizer before a randomly initialised 2-layer BERT (hidden 32): what the end-to-end tests of a run's
# plumbing train (resume, tracking, sweeps, processes), where what MiniLM's weights learn is not the point. Its runs
# read and cache the data exactly as MiniLM's do, and take half the CPU (no 90 MB of weights to load, save and
# checkpoint each time). Built once per test session, by the ``tiny_minilm`` fixture under --slow.
TINY_MINILM = Path(os.environ.get("AFQMC_EXP_CACHE", Path(tempfile.gettempdir()) / "afqmc-exp-tests")) / "tiny-minilm"

# a short offline training on the shared AFQMC data, as most end-to-end tests run it (add max_steps etc.)
SHORT_RUN = [
    "model=minilm",  # the run's name, tags and study say minilm; the weights are TINY_MINILM's
    f"model.name_or_path={TINY_MINILM}",
    f"data.dir={AFQMC}",
    "data.test_file=null",
    "data.dev_limit=100",  # each evaluation scores 100 dev pairs, not 500: a third of a short run's time
    "data.max_length=48",
    "trainer.device=cpu",
    "trainer.progress_bar=false",
    "tracking.log_weights=false",
]


def compose(overrides: list[str], tmp_path: Path | None = None):
    """The train config as train.py would see it, with Hydra's runtime config set (output dir in tmp_path)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import afqmc_exp  # noqa: F401  (resolvers)

    extra = []
    if tmp_path is not None:
        extra = [f"hydra.run.dir={tmp_path / 'run'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides + extra, return_hydra_config=True)
    with open_dict(cfg):  # what Hydra's launcher fills in for a real run
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train(overrides: list[str], tmp_path: Path) -> float:
    """A real training run, in-process, as `python train.py <overrides>` would do it."""
    from afqmc_exp.commands.train import train_from_config

    return train_from_config(compose(overrides, tmp_path))


def mlflow_runs(tmp_path: Path, experiment: str):
    """The client of the store in ``tmp_path`` and the experiment's runs. Through ``store.client``, which opens a
    file that replaced one of the same path (a test's tmp_path is removed as it passes, and its name given again)."""
    from afqmc_exp.tracking import store

    if not (tmp_path / "mlflow.db").exists():
        return None, []  # no store made: no run
    client = store.client(f"sqlite:///{tmp_path / 'mlflow.db'}", create=False)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(command: str, store: str, cwd: Path, port: int, *extra: str, jobs: bool = False) -> subprocess.Popen:
    """`mlflow ui|server --backend-store-uri STORE` on 127.0.0.1:PORT in its own process group, waited for.
    ``jobs``: with MLflow's job runner, as a user's command starts it. Our runs use no MLflow job, and the runner
    is 8 more processes that take about 25 s of CPU as they start (against 7 s for the server alone, on this
    project's 2-core machines), CPU the tests beside it need."""
    import time
    import urllib.request

    log = cwd / f"mlflow-{command}-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(jobs).lower()}
    with open(log, "a") as out:
        exe = str(Path(sys.executable).parent / "mlflow")
        args = [exe, command, "--backend-store-uri", store, *extra, "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(args + ["--workers", "1"], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"mlflow {command} did not start"
        time.sleep(0.5)


def stop_mlflow(proc: subprocess.Popen) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@contextlib.contextmanager
def mlflow_service(command: str, store: str, cwd: Path, *extra: str, jobs: bool = False):
    """`mlflow ui|server --backend-store-uri STORE` on a free loopback port, waited for; yields its URL."""
    port = free_port()
    proc = start_mlflow(command, store, cwd, port, *extra, jobs=jobs)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow(proc)


WORDS = (
    "how do i repay my huabei loan when is the bill due can i pay by card what about jiebei limit "
    "why was payment refused open account close change phone number"
).split()


def tiny_pretrained(folder: Path, seed: int = 0, dropout: float = 0.1):
    """A randomly initialised 2-layer BERT (hidden 32) with a WordPiece tokenizer over ``WORDS``: a real
    ``Pretrained`` that trains in milliseconds, for fast tests of the trainer's phases."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from afqmc_exp.model import Pretrained

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]  # a line each: its id
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))  # (transformers 5 ignores vocab_file=: all [UNK])
    torch.manual_seed(seed)
    config = tiny_bert_config(len(tokenizer), dropout, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    return Pretrained(model=BertForSequenceClassification(config), tokenizer=tokenizer, name_or_path=str(folder))


def tiny_bert_config(vocab_size: int, dropout: float = 0.1, **extra):
    """A 2-layer BERT config (hidden 32, 4 heads) with a 2-way head."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
        **extra,
    )


def tiny_pairs(n: int, seed: int = 0):
    """``n`` labelled pairs over ``WORDS``: label 1 when both sentences are the same words."""
    import random

    from afqmc_exp.data import Pair

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        first = " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))
        same = rng.random() < 0.4
        second = first if same else " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))
        pairs.append(Pair(first, second, int(same), i))
    return pairs


def pairs_split(pairs, tokenizer, max_length: int):
    """A split of pairs held in memory, tokenized."""
    from afqmc_exp.data import Split, encode_pairs

    return Split.of_pairs(pairs, encode_pairs(pairs, tokenizer, max_length))


def token_split(ids: list[list[int]], types: list[list[int]] | None = None, labels: list[int] | None = None):
    """A split of pairs given as token ids (types 0 and labels alternating 0/1 unless given)."""
    import numpy as np

    from afqmc_exp.data import Pair, Split, TokenArrays

    types = types or [[0] * len(x) for x in ids]
    labels = labels if labels is not None else [i % 2 for i in range(len(ids))]
    tokens = TokenArrays(
        ids=np.array([t for row in ids for t in row], dtype=np.int32),
        type_ids=np.array([t for row in types for t in row], dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64),
        labels=np.array(labels, dtype=np.int16),
    )
    return Split.of_pairs([Pair("a", "b", label, i) for i, label in enumerate(labels)], tokens)


def build_tiny_minilm(folder: Path = TINY_MINILM) -> Path:
    """``folder`` holding the TINY_MINILM model (the same bytes every time: seeded), unless it is there already.
    Workers of one session may race to build it: each builds aside and the first rename wins."""
    import shutil

    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from afqmc_exp.model import packaged_minilm_path

    if folder.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-minilm-"))
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    torch.manual_seed(0)
    config = tiny_bert_config(tokenizer.vocab_size, max_position_embeddings=512)
    BertForSequenceClassification(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # another worker's is in place
        shutil.rmtree(staging)
    return folder


@contextlib.contextmanager
def held_elsewhere(lock: Path):
    """``lock`` held by another process (a second command in a run folder) for the block; let go when it ends."""
    holder = subprocess.Popen(
        [PYTHON, "-c", "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def head_of(source: Path, target: Path, lines: int) -> Path:
    """``target`` holding the first ``lines`` lines of ``source`` (a data file's pairs, fewer of them: a size)."""
    target.write_text("".join(source.read_text(encoding="utf-8").splitlines(True)[:lines]), encoding="utf-8")
    return target


def broken_model(folder: Path) -> Path:
    """A copy of MiniLM's folder whose weights file is garbage: it passes every check made before a run and
    fails inside it, when the weights are loaded."""
    import shutil

    from afqmc_exp.model import packaged_minilm_path

    shutil.copytree(packaged_minilm_path(), folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder


class HostSyncs:
    """Counts the operations that make the host read a tensor's value (``.item()``, ``bool(t)``, ``nonzero``):
    on a GPU each one makes the CPU wait for every queued kernel. Seen on CPU through a dispatch mode, so a
    test can assert that a code path has none. Use: ``with HostSyncs() as syncs: ...; syncs.calls``."""

    NAMES = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.nonzero")

    def __enter__(self):
        import traceback

        from torch.utils._python_dispatch import TorchDispatchMode

        probe, self.calls = self, []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if str(func).rsplit(".", 1)[0] in HostSyncs.NAMES:
                    stack = traceback.extract_stack()[-6:-1]
                    probe.calls.append(f"{func} at " + " <- ".join(f"{f.filename}:{f.lineno}" for f in stack))
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
