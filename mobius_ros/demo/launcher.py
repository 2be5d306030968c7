"""Start the node in its own process on a private, localhost-only ROS 2 graph, and stop it.

This is what a launch file does, done with the standard library, because the PyPI ROS wheels
have no `launch`. The node gets the interface packages' environment (`build_interfaces`), its
parameters as `-p name:=value` arguments and its log in a file that the demo shows on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobius_ros.ros.dds import dds_environment
from mobius_ros.ros.interfaces import REPO_ROOT

READY_TEXT = 'active: listening'
FAILED_TEXT = 'cannot configure'


def private_graph(domain_id: int | None = None) -> dict[str, str]:
    """Environment of a ROS 2 graph only this demo uses: its own domain id, loopback only,
    and the Fast DDS profile that lets camera-sized frames through (`ros.dds`).

    The default id (20..99) stays clear of the range the ROS tests take (100..199) and is
    spread by process id so that two demos on one machine do not meet.
    """
    domain = 20 + os.getpid() % 80 if domain_id is None else domain_id
    if not 0 <= domain <= 232:
        raise ValueError(f'ROS_DOMAIN_ID must be in 0..232, got {domain}')
    graph = {
        'ROS_DOMAIN_ID': str(domain),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'RMW_IMPLEMENTATION': os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'),
    }
    # Camera-sized frames over best-effort Fast DDS need the large-frames profile (ros.dds).
    return {**graph, **dds_environment({**os.environ, **graph})}


def parameter_arguments(parameters: Mapping[str, Any]) -> list[str]:
    """`-p name:=value` pairs, values in the YAML form that `--ros-args` parses."""
    arguments: list[str] = []
    for name, value in parameters.items():
        if isinstance(value, bool):
            text = 'true' if value else 'false'
        elif isinstance(value, list | tuple):
            text = '[' + ','.join("'" + str(v).replace("'", "''") + "'" for v in value) + ']'
        elif isinstance(value, str):
            text = "'" + value.replace("'", "''") + "'"
        else:
            text = str(value)
        arguments += ['-p', f'{name}:={text}']
    return arguments


@dataclass
class NodeProcess:
    """The running node: its process, log file and namespace."""

    process: subprocess.Popen
    log_path: Path
    namespace: str

    def topic(self, relative: str) -> str:
        """Full name of one of the node's topics or services."""
        return f'{self.namespace}/{relative}'

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def excerpt(self, lines: int = 12) -> str:
        """The node's last error with the last lines of its traceback, else the log's tail."""
        log = self.log().splitlines()
        errors = [n for n, line in enumerate(log) if line.startswith(('[ERROR]', '[FATAL]'))]
        if not errors:
            return '\n'.join(log[-lines:])
        first = log[errors[-1]]
        rest = [line for line in log[errors[-1] + 1 :] if line.strip()]
        if len(rest) > lines - 1:  # a traceback: its end says what went wrong
            rest = ['  ...', *rest[-(lines - 2) :]]
        return '\n'.join([first, *rest])

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, text: str, timeout: float = 60.0) -> bool:
        """True once `text` is in the log; False if the node exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.alive():
                return False
            time.sleep(0.1)
        return False

    def wait_ready(self, timeout: float) -> str | None:
        """None once the node is active; otherwise why not (failed, exited or timed out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if READY_TEXT in log:
                return None
            if FAILED_TEXT in log:
                return 'the node could not load the model'
            if not self.alive():
                return f'the node exited with code {self.process.returncode} while starting'
            time.sleep(0.2)
        return f'the node was not active after {timeout:.0f} s'

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (rclpy shuts down cleanly), then SIGKILL after `timeout`; the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_node(
    *,
    environment: Mapping[str, str],
    parameters: Mapping[str, Any],
    namespace: str,
    log_path: Path,
) -> NodeProcess:
    """Run `python -m mobius_ros.ros.node` with `parameters` under `namespace`."""
    env = dict(environment)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get('PYTHONPATH', '')) if p
    )
    env.setdefault('HF_HUB_OFFLINE', '1')
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '0'
    arguments = ['--ros-args', '-r', f'__ns:={namespace}', *parameter_arguments(parameters)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [sys.executable, '-m', 'mobius_ros.ros.node', *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the demo, which stops it
        )
    return NodeProcess(process, log_path, namespace)
