"""hapnet_d2.utils.runs.run_child: a tool stopped while its train_net.py child runs stops the
child too (before, `kill <synth_ablation pid>` left training running as an orphan)."""
import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = """
import sys
from hapnet_d2.utils.runs import run_child
print("exit", run_child([sys.executable, "-c", sys.argv[1]], cwd="."), flush=True)
"""
# the child writes its pid, then sleeps; {ignore} optionally makes it ignore SIGTERM
CHILD = ("import os, signal, sys, time; {ignore}open(sys.argv[1], 'w').write(str(os.getpid())); "
         "time.sleep(120)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped by init yet) counts as stopped
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _start(tmp_path, ignore_sigterm: bool):
    pid_file = tmp_path / "child.pid"
    child_code = CHILD.format(ignore="signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_sigterm else "")
    child_code = child_code.replace("sys.argv[1]", repr(str(pid_file)))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child_code], stdout=subprocess.PIPE, text=True)
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            return parent, int(pid_file.read_text())
        time.sleep(0.1)
    parent.kill()
    pytest.fail("the child did not start")


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["child-obeys", "child-ignores-sigterm"])
def test_sigterm_to_the_parent_stops_the_child(tmp_path, ignore_sigterm):
    parent, child_pid = _start(tmp_path, ignore_sigterm)
    parent.send_signal(signal.SIGTERM)
    code = parent.wait(timeout=60)
    time.sleep(0.5)
    try:
        assert not _alive(child_pid), "the child was left running"
    finally:
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
    assert code == 128 + signal.SIGTERM


def test_the_child_exit_code_is_returned(tmp_path):
    out = subprocess.run([sys.executable, "-c", PARENT, "import sys; sys.exit(3)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exit 3"
