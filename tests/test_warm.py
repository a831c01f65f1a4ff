"""The warm-start server of `make repro` (pipeline/warm.py): a stage run through it behaves as the same
command run on its own (output, exit status, errors), and a killed stage takes its forked child down."""

import os
import subprocess
import sys
import time

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
STAGE = """
import sys, time
sys.path.insert(0, {pipeline!r})
import _common
_common.hand_off()  # under $DIFFLAB_WARM: the command runs in a fork of the server
import os
print("pid", os.getpid(), "args", sys.argv[1:], "warm" if "DIFFLAB_WARM" in os.environ else "plain")
mode = sys.argv[1]
if mode == "fail":
    raise ValueError("a programming error")
if mode == "exit":
    sys.exit(3)
if mode == "sleep":
    time.sleep(float(sys.argv[2]))
    open(sys.argv[3], "w").write("finished")
"""


def _stage(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(STAGE.format(pipeline=str(ROOT / "pipeline")))
    return script


def _warm(*command, **kw):
    cmd = [sys.executable, str(ROOT / "pipeline/warm.py"), "--preload", "json", "--", *command]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_a_stage_through_the_server_equals_the_stage_alone(tmp_path):
    script = _stage(tmp_path)
    for mode, status in (("ok", 0), ("exit", 3), ("fail", 1)):
        alone = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True)
        warm = _warm(sys.executable, str(script), mode, cwd=tmp_path)
        assert alone.returncode == warm.returncode == status, (mode, warm.stderr)
        assert f"args ['{mode}'] plain" in alone.stdout and f"args ['{mode}'] plain" in warm.stdout
        assert warm.stdout.count("pid") == 1  # the client handed over: only the child printed
        if mode == "fail":
            assert "ValueError: a programming error" in alone.stderr and "ValueError" in warm.stderr
    assert "[warm] imported json once" in warm.stdout


def test_a_killed_stage_takes_its_child_down(tmp_path):
    script, marker = _stage(tmp_path), tmp_path / "marker"
    # the command under the server: start the stage, SIGKILL it after 2 s, then wait past its sleep
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import subprocess, sys, time, signal\n"
        f"p = subprocess.Popen([sys.executable, {str(script)!r}, 'sleep', '6', {str(marker)!r}])\n"
        "time.sleep(2); p.send_signal(signal.SIGKILL); p.wait(); time.sleep(6)\n"
    )
    start = time.time()
    r = _warm(sys.executable, str(driver), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert time.time() - start >= 8
    assert not marker.exists()  # the forked child stopped with its stage: it wrote nothing


def test_without_the_server_a_stage_runs_on_its_own(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DIFFLAB_WARM"}
    r = subprocess.run([sys.executable, str(_stage(tmp_path)), "ok"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "plain" in r.stdout
