"""A real two-node Ray cluster on one machine: a head and a second node started as separate
``ray start`` processes (own ports, own ``--resources``), a search driven against the head's
address with the feature cache on a path both nodes see; the second node is killed (SIGKILL,
raylet and workers: a machine that dies) while it runs a trial.  Its trial is re-run on the
head, nothing is lost and the archive has one row per sample."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")
if not RAY.is_file() or not Path("/proc/self/stat").is_file():
    pytest.skip("needs the ray command next to python and /proc", allow_module_level=True)

#: Faster node-death detection than Ray's defaults (15 s and more), for the whole cluster.
FAST_HEALTH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
               "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}

DRIVER = """
import json, sys
from nasfcos.search.loop import Search, SearchConfig
from nasfcos.search.ppo import PPOConfig
from nasfcos.search.proxy import PRESETS, make_evaluator
out, address, cache = sys.argv[1:4]
small = PRESETS["tiny"].replace(name="small", short_side=64, max_size=64, crop=64, fpn_channels=8,
                                head_channels=32, batch_size=4, eval_batch_size=8, num_threads=1)
cfg = SearchConfig(preset="tiny", trials=8, batch_size=4, seed=3, cache=cache,
                   ppo=PPOConfig(minibatch_size=4, epochs=1))
Search(out, cfg, evaluator=make_evaluator(cache, small, max_steps=30), executor_kind="ray",
       address=address, progress=False, plot_every_s=None).run()
"""


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_args(ports: list[int], worker_base: int) -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    args = [x for name, port in zip(names, ports, strict=False) for x in (name, str(port))]
    return args + ["--min-worker-port", str(worker_base), "--max-worker-port", str(worker_base + 40),
                   "--num-cpus", "1", "--disable-usage-stats", "--block"]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == pid:
                out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError):
            continue
    return out


def _raylet(ray_start: subprocess.Popen[bytes], deadline: float) -> int:
    while time.monotonic() < deadline:
        for pid, cmd in _children(ray_start.pid):
            if "/raylet " in cmd:
                return pid
        assert ray_start.poll() is None, f"ray start exited ({ray_start.returncode})"
        time.sleep(0.2)
    raise AssertionError("a node's raylet did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a ``ray start --block`` we started (it stops its node's processes), then its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_killed_node_trials_rerun_elsewhere(tmp_path: Path) -> None:
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.search.archive import read_rows
    from nasfcos.search.proxy import PRESETS, build_cache

    shared = tmp_path / "shared"  # the path every node sees (NFS on a real cluster)
    small = PRESETS["tiny"].replace(name="small", short_side=64, max_size=64, crop=64, fpn_channels=8,
                                    head_channels=32, batch_size=4, eval_batch_size=8, num_threads=1)
    write_synthetic(shared / "data", SynthConfig(images=24, size=64, seed=1))
    cache = build_cache(shared / "data", shared / "cache", small, progress=False)

    # token authentication with a cluster token every process is given (as on a real cluster;
    # Ray >= 2.5x otherwise picks up ~/.ray/auth_token for a head only, and a node cannot join)
    env = {**os.environ, **FAST_HEALTH, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp = tempfile.mkdtemp(prefix="r23")  # short: Ray's socket paths must stay < 108 bytes
    head_port, *ports = _ports(13)
    base = 20000 + (os.getpid() % 400) * 100
    address = f"127.0.0.1:{head_port}"
    common = ["--temp-dir", temp, "--node-ip-address", "127.0.0.1"]
    head = subprocess.Popen([str(RAY), "start", "--head", "--port", str(head_port), "--include-dashboard", "false",
                             "--resources", json.dumps({"head": 1}), *common, *_node_args(ports[:6], base)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    node2 = None
    driver = None
    try:
        deadline = time.monotonic() + 150
        _raylet(head, deadline)  # the head is up (GCS, then its raylet) before a node joins it
        node2 = subprocess.Popen([str(RAY), "start", "--address", address, "--resources", json.dumps({"node2": 1}),
                                  *common, *_node_args(ports[6:], base + 50)],
                                 env=env, stdout=(tmp_path / "node2.log").open("wb"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
        raylet2 = _raylet(node2, deadline)
        out = tmp_path / "search"
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), address, str(cache)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        # kill the second node while one of its workers runs a trial
        victims: list[int] = []
        while time.monotonic() < deadline and driver.poll() is None:
            workers = [(pid, cmd) for pid, cmd in _children(raylet2) if cmd.startswith("ray::")]
            if any(cmd.startswith("ray::run_task") for _, cmd in workers):
                victims = [pid for pid, cmd in workers if "Agent" not in cmd]
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                os.killpg(node2.pid, signal.SIGKILL)  # raylet, log monitor, agents
                break
            time.sleep(0.05)
        assert victims, "no trial ran on the second node before the search ended"
        log = driver.communicate(timeout=max(1.0, deadline - time.monotonic() + 30))[0].decode()
        assert driver.returncode == 0, log[-2000:]
    finally:
        for proc in (driver, node2, head):
            if proc is not None:
                _stop(proc)
        subprocess.run(["rm", "-rf", temp], check=False)

    rows = [r.to_json() for r in read_rows(out / "archive.jsonl")]
    keys = [(r["step"], r["index"]) for r in rows]
    assert sorted(keys) == [(s, i) for s in range(2) for i in range(4)]  # nothing lost, no duplicate
    assert all(r["status"] in ("ok", "reused") for r in rows), [(r["status"], r["errors"]) for r in rows]
    rerun = [r for r in rows if r["attempts"] == 2]
    assert rerun, "the killed node's trial was not re-run"
    for r in rerun:  # re-run elsewhere: not by a process of the dead node
        assert int(r["worker"].rsplit(":", 1)[1]) not in victims
        assert any("Died" in e or "died" in e or "lost" in e for e in r["errors"]), r["errors"]
    # every worker process verified the shared cache once
    assert {r["extra"]["cache_verifications"] for r in rows if r["status"] == "ok"} == {1}
