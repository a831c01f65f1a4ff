"""Warm start for the stages: import torch and the other heavy libraries once, fork a stage per request.

Every DVC stage is a fresh Python process, and on a small CPU importing torch alone takes ~5.5 s
(Lightning ~14 s more for `train`, torch-fidelity's torchvision ~10 s more for `prepare` and
`evaluate`): the quick experiment's 34 stages would spend minutes importing. `make repro` therefore
runs `dvc repro` under this server:

    python pipeline/warm.py -- dvc repro        # what `make repro` runs

It imports the libraries in PRELOAD (never difflab itself, so edited code is always fresh), listens
on a Unix socket named by $DIFFLAB_WARM in the environment of the command it runs, and exits with that
command's status. A stage script started by DVC finds $DIFFLAB_WARM in `_common.run` (`hand_off`) and
hands its command line, working directory, environment and standard output/error (the file
descriptors themselves) to the server, which forks a child with the libraries already imported; the
child runs the script exactly as `python SCRIPT ARGS` would and reports its exit status. When the
stage process dies (DVC stopped, SIGKILL), the child notices the closed connection and exits at once,
so a killed stage leaves nothing behind.

The server itself never runs a torch operation before it forks (no thread pools, no CUDA context),
so the children start from a clean state.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import runpy
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ENV = "DIFFLAB_WARM"
PRELOAD = ("numpy", "scipy.linalg", "torch", "torchdiffeq", "lightning.pytorch", "torch_fidelity", "yaml")
_HEADER = struct.Struct("!I")


def _send(conn: socket.socket, obj, fds=()) -> None:
    data = json.dumps(obj).encode()
    msg = _HEADER.pack(len(data)) + data
    if fds:
        conn.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        conn.sendall(msg)


def _recv(conn: socket.socket, with_fds: int = 0):
    """One message (and up to ``with_fds`` file descriptors sent with it), or None at EOF."""
    fds = []
    if with_fds:
        msg, anc, _, _ = conn.recvmsg(_HEADER.size, socket.CMSG_LEN(with_fds * array.array("i").itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(array.array("i", data[: len(data) - len(data) % array.array("i").itemsize]))
    else:
        msg = conn.recv(_HEADER.size, socket.MSG_WAITALL)
    if len(msg) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(msg)
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return (json.loads(data), fds) if with_fds else json.loads(data)


# -- the stage side: hand the command to the server ----------------------------------------------
def delegate(path: str) -> None:
    """Run this process's command (``sys.argv``) in a child of the server at ``path``; exit with its
    status. Returns (runs the stage here) when the server cannot be reached."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = {k: v for k, v in os.environ.items() if k != ENV}
    request = {"argv": [os.path.abspath(sys.argv[0]), *sys.argv[1:]], "cwd": os.getcwd(), "env": env}
    _send(conn, request, fds=[1, 2])
    reply = _recv(conn)
    sys.exit(1 if reply is None else int(reply["status"]))


# -- the server side ---------------------------------------------------------------------------------
def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage process and run its script."""
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch():  # the stage process is gone (killed, DVC stopped): stop at once, write nothing more
        conn.recv(1)
        os._exit(137)

    threading.Thread(target=watch, daemon=True).start()
    script, *args = request["argv"]
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).parent)
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    _send(conn, {"status": status})
    os._exit(status)


def serve(listener: socket.socket) -> None:
    """Accept stage requests forever; each one runs in a forked child."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        conn, _ = listener.accept()
        got = _recv(conn, with_fds=2)
        if got is None:
            conn.close()
            continue
        request, fds = got
        if os.fork() == 0:
            listener.close()
            _child(conn, request, fds)
        for fd in fds:
            os.close(fd)
        conn.close()


def preload(modules=PRELOAD) -> float:
    import importlib

    start = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library: its stages import it themselves
            pass
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--preload",
        default=",".join(PRELOAD),
        help="modules to import once, comma-separated (default: %(default)s)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, e.g. -- dvc repro")
    args = p.parse_args(argv)
    modules = tuple(m for m in args.preload.split(",") if m)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run, e.g. `python pipeline/warm.py -- dvc repro`")
    with tempfile.TemporaryDirectory(prefix="difflab-warm-") as tmp:
        path = os.path.join(tmp, "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        server = os.fork()
        if server == 0:
            # CUDA must not be initialised before a fork: torch.cuda.is_available() (which a library
            # may call on import) then asks NVML instead of creating a driver context
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
            seconds = preload(modules)
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                print("[warm] CUDA was initialised while importing: stages start on their own", flush=True)
                os._exit(0)  # nobody listens: every stage finds no server and runs by itself
            print(f"[warm] imported {', '.join(modules)} once: {seconds:.1f} s", flush=True)
            serve(listener)
        listener.close()
        try:
            return subprocess.run(command, env={**os.environ, ENV: path}, check=False).returncode
        finally:
            os.kill(server, signal.SIGTERM)
            os.waitpid(server, 0)


if __name__ == "__main__":
    sys.exit(main())
