"""The test suite as its user meets it: one Ctrl-C stops ``python -m pytest --slow`` and the command a test is running
(the commands' prewarmed server runs in a session of its own, so the terminal's Ctrl-C reaches pytest alone, and a
test interrupted while it waits on a command kills it); a session leaves nothing behind in the temporary folder but
pytest's own."""

import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import alive

from helpers import REPO

pytestmark = pytest.mark.slow  # a pytest of its own, and a training in it

HELD = """
import os, sys
sys.path.insert(0, {tests!r})
from helpers import OFFLINE, SHORT_RUN, run_command

def test_held_at_a_gate(tmp_path):
    run_command([sys.executable, {faulty!r}, "gate", "1", *SHORT_RUN, "trainer.max_steps=3",
                 f"hydra.run.dir={{tmp_path / 'run'}}"], cwd=tmp_path, env={{**OFFLINE, "AFQMC_TEST_GATE": {gate!r}}},
                timeout=600)
"""


def as_at_a_terminal() -> None:
    """Ctrl-C as a terminal's foreground job gets it, even where this suite was started in the background (a
    shell's ``&`` has it ignored, and Python then leaves it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_one_ctrl_c_stops_the_suite_and_the_command_a_test_waits_on(tmp_path):
    gate = tmp_path / "gate"  # never opened: the training waits at its first step until it is stopped
    test_file = tmp_path / "test_held.py"
    test_file.write_text(HELD.format(tests=str(REPO / "tests"), faulty=str(REPO / "tests" / "helpers" /
                                     "faulty_train.py"), gate=str(gate)))  # fmt: skip
    with open(tmp_path / "pytest.log", "w") as log:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)]
        suite = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=as_at_a_terminal)  # fmt: skip
    waiting, deadline = gate.with_name("gate.waiting"), time.monotonic() + 300
    while not (waiting.exists() and waiting.read_text()):  # the training has reached its gate
        assert suite.poll() is None and time.monotonic() < deadline, (tmp_path / "pytest.log").read_text()[-3000:]
        time.sleep(0.1)
    training = int(waiting.read_text())
    os.killpg(suite.pid, signal.SIGINT)  # the terminal's Ctrl-C: to pytest's foreground process group
    try:
        assert suite.wait(timeout=120) != 0
    finally:
        if suite.poll() is None:
            os.killpg(suite.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while alive(training):  # killed with the test that waited on it, not left at its gate
        assert time.monotonic() < deadline, f"the training ({training}) outlived the suite"
        time.sleep(0.1)


def test_a_session_leaves_only_pytests_folder_and_no_passed_tests_files_in_the_temporary_folder():
    """The session's cache (tokens, the tiny model) and the prewarmed server's folder are removed when it ends, a
    passed test's tmp_path as it ends, and what a killed session left when the next starts (conftest.py: on a RAM
    disk they would hold memory)."""
    temp = Path(tempfile.mkdtemp(prefix="s-"))  # a short path: the prewarmed server's socket is named under it
    test = "test_config_checks.py::test_help_leads_with_a_short_usage_the_groups_and_the_keys"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "AFQMC_EXP_CACHE"}
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = temp / f"afqmc-exp-tests-pid{ended.stdout.strip()}-cache-x"  # a session killed before its atexit
    running = temp / f"afqmc-exp-tests-pid{os.getpid()}-cache-x"  # a session still running beside it
    for folder in (killed, running):
        (folder / "tiny-minilm").mkdir(parents=True)
    try:
        said = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "--slow",
                               f"tests/{test}_most_changed"], cwd=REPO, env={**env, "TMPDIR": str(temp)},
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert said.returncode == 0 and "1 passed" in said.stdout, said.stdout[-3000:] + said.stderr[-3000:]
        ours = temp / f"pytest-of-{getpass.getuser()}"
        assert sorted(temp.iterdir()) == [running, ours]  # its command (a prewarmed server's child) came and went
        assert not [p for p in ours.rglob("*") if p.name.startswith("test_help")]  # its tmp_path, removed
    finally:
        shutil.rmtree(temp)
