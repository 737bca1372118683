"""The ``container`` runner: the module is an OCI image, run with docker or podman.

``run: {container: {image, command, network, cpus, memory, gpus, env, user, runtime}, timeout}``.

* The runtime is ``container.runtime``, else ``OXIDICOM_CONTAINER_RUNTIME`` (the worker's
  module environment, then the process environment), else the first of ``docker``, ``podman``
  on ``PATH``. A command name or a path; it is resolved to a path before use.
* The job's folders are bind-mounted at the contract's fixed in-container paths: ``/input``
  (read-only), ``/output`` (read-write), ``/task.json`` (read-only), and the contract's
  variables point there (also under mercure's and MONAI Deploy's names). ``{input}``,
  ``{output}`` and ``{task}`` in ``command`` become those in-container paths.
* Locked down by default: ``--network none`` (``network: true`` keeps the engine's default
  network, a string names one), ``--cap-drop ALL``, ``--security-opt no-new-privileges``, and
  ``--user <uid>:<gid>`` of the worker, so that outputs are ours to read and remove (``user``
  overrides it). Rootless podman maps the container's uids to sub-uids, so for podman run by a
  non-root user ``--userns keep-id`` is added (it maps our uid to itself). Rootless *docker*
  has the same problem and no such flag: set ``user: "0:0"`` there (root in the container is
  the worker's user on the host).
* GPUs: docker takes ``--gpus all|<count>|device=<ids>`` (a ``device=0,1`` list is quoted as
  docker's CSV parser requires). Podman is given CDI devices instead (``--device
  nvidia.com/gpu=all``, one ``nvidia.com/gpu=<i>`` per index for a count or a device list),
  which works with the NVIDIA Container Toolkit's CDI spec on every podman version, while
  podman's ``--gpus`` only exists from 5.0.
* Environment: the worker's module environment (``RunRequest.env``, which holds the rule's
  ``run.env``) and then ``container.env`` are passed with ``-e`` (later wins), but ``PATH`` and
  ``OXIDICOM_CONTAINER_RUNTIME``, which are about the host. ``-e`` values are visible in the
  process list of the host: pass no secrets this way.
* At the time limit the client (``docker run``) is killed with its process group, which does
  not stop a container run by a daemon: ``<runtime> kill <name>`` is run too (bounded, errors
  ignored); ``--rm`` then removes it. The same happens when the worker cancels the attempt.
* No SELinux relabelling (``:z``) is asked for: it would relabel the stored files the inputs
  are hard links of. On SELinux hosts, run the engine with label separation disabled for jobs.

Tests run no container engine: they use a stand-in runtime (a small script that records its
arguments and emulates ``run`` and ``kill``); the argv is checked exactly with
:func:`container_argv`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oxidicom_py.processing.runners.base import TIMED_OUT, RunRequest, RunResult, placeholders, run_process

RUNTIME_ENV = "OXIDICOM_CONTAINER_RUNTIME"
RUNTIMES = ("docker", "podman")
NO_RUNTIME = "no container runtime: install docker or podman, or set OXIDICOM_CONTAINER_RUNTIME"
KILL_TIMEOUT = 15.0
"""Seconds given to ``<runtime> kill``."""

INPUT, OUTPUT, TASK = "/input", "/output", "/task.json"
_HOST_ONLY = frozenset({"PATH", RUNTIME_ENV})


class SpecError(ValueError):
    """The rule's ``container`` mapping is not usable; the message says why."""


def find_runtime(container: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The path of the runtime to use (see the module docstring); :class:`SpecError` if none."""
    search_path = env.get("PATH", os.defpath)
    for origin, value in (("container.runtime", container.get("runtime")), (RUNTIME_ENV, env.get(RUNTIME_ENV))):
        if value:
            if not isinstance(value, str):
                raise SpecError(f"{origin} must be a string")
            found = shutil.which(value, path=search_path)
            if found is None:
                raise SpecError(f"container runtime {value!r} (from {origin}) not found or not executable")
            return found
    for name in RUNTIMES:
        found = shutil.which(name, path=search_path)
        if found is not None:
            return found
    raise SpecError(NO_RUNTIME)


def is_podman(runtime: str) -> bool:
    return "podman" in Path(runtime).name


def _network(value: Any) -> list[str]:
    if value is None or value is False:
        return ["--network", "none"]
    if value is True:
        return []
    if isinstance(value, str) and value:
        return ["--network", value]
    raise SpecError("container.network must be true, false or a network name")


def _gpu_indices(value: str) -> list[str]:
    ids = value.removeprefix("device=").strip('"').split(",")
    return [i.strip() for i in ids if i.strip()]


def _gpus(value: Any, podman: bool) -> list[str]:
    if value is None or value is False:
        return []
    if isinstance(value, bool) or value == "all":
        value = "all"
    elif isinstance(value, int):
        if value < 1:
            raise SpecError("container.gpus must be a positive count, 'all' or 'device=<ids>'")
    elif not isinstance(value, str) or not value:
        raise SpecError("container.gpus must be a positive count, 'all' or 'device=<ids>'")
    if not podman:
        text = str(value)
        if text.startswith("device=") and "," in text:
            text = f'"{text}"'  # docker reads --gpus as CSV: a device list must be quoted
        return ["--gpus", text]
    if value == "all":
        devices = ["nvidia.com/gpu=all"]
    elif isinstance(value, int):
        devices = [f"nvidia.com/gpu={i}" for i in range(value)]
    elif value.startswith("nvidia.com/"):
        devices = [value]
    else:
        devices = [f"nvidia.com/gpu={i}" for i in _gpu_indices(value)]
    return [arg for device in devices for arg in ("--device", device)]


def _env_pairs(*maps: Mapping[str, Any]) -> list[str]:
    args = []
    for mapping in maps:
        for key, value in mapping.items():
            if key in _HOST_ONLY:
                continue
            if not isinstance(key, str) or not key or "=" in key:
                raise SpecError(f"container.env: {key!r} is not a variable name")
            args += ["-e", f"{key}={value}"]
    return args


def _mount(host: Path, target: str, mode: str) -> str:
    text = str(host.resolve())
    if ":" in text or "," in text:
        raise SpecError(f"{text}: a path with ':' or ',' cannot be bind-mounted with -v")
    return f"{text}:{target}:{mode}"


def _limit(container: Mapping[str, Any], key: str) -> list[str]:
    value = container.get(key)
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        raise SpecError(f"container.{key} must be a number or a string")
    return [f"--{key}", f"{value:g}" if isinstance(value, float) else str(value)]


def container_argv(request: RunRequest, runtime: str, *, name: str | None = None) -> list[str]:
    """The full ``<runtime> run ...`` command line of ``request``; :class:`SpecError` if the spec is bad."""
    container = request.spec.get("container")
    if not isinstance(container, Mapping):
        raise SpecError("run.container must be a mapping")
    image = container.get("image")
    if not isinstance(image, str) or not image:
        raise SpecError("container.image must be a non-empty string")
    command = container.get("command") or []
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise SpecError("container.command must be a list of strings")
    extra_env = container.get("env") or {}
    if not isinstance(extra_env, Mapping):
        raise SpecError("container.env must be a mapping")
    user = container.get("user", f"{os.getuid()}:{os.getgid()}")
    if not isinstance(user, str | int) or isinstance(user, bool) or str(user) == "":
        raise SpecError("container.user must be a string like '1000:1000'")
    podman = is_podman(runtime)
    contract = {
        "OXIDICOM_INPUT_DIR": INPUT,
        "OXIDICOM_OUTPUT_DIR": OUTPUT,
        "OXIDICOM_TASK": TASK,
        "MERCURE_IN_DIR": INPUT,
        "MERCURE_OUT_DIR": OUTPUT,
        "MONAI_INPUTPATH": INPUT,
        "MONAI_OUTPUTPATH": OUTPUT,
        "OXIDICOM_JOB_ID": str(request.job_id),
    }
    argv = [runtime, "run", "--rm", "--name", name or container_name(request.job_id)]
    argv += _network(container.get("network", False))
    argv += ["-v", _mount(request.input_dir, INPUT, "ro")]
    argv += ["-v", _mount(request.output_dir, OUTPUT, "rw")]
    argv += ["-v", _mount(request.task_file, TASK, "ro")]
    argv += [arg for key, value in contract.items() for arg in ("-e", f"{key}={value}")]
    argv += _limit(container, "cpus") + _limit(container, "memory")
    argv += _gpus(container.get("gpus"), podman)
    argv += _env_pairs(request.env, extra_env)
    argv += ["--user", str(user)]
    if podman and os.getuid() != 0:
        argv += ["--userns", "keep-id"]
    argv += ["--security-opt", "no-new-privileges", "--cap-drop", "ALL", image]
    argv += placeholders(command, {"input": INPUT, "output": OUTPUT, "task": TASK})
    return argv


def container_name(job_id: int) -> str:
    return f"oxidicom-job-{job_id}-{secrets.token_hex(4)}"


async def _kill(runtime: str, name: str, env: Mapping[str, str]) -> None:
    """``<runtime> kill <name>``, bounded; its failure (the container already gone) is ignored."""
    await run_process([runtime, "kill", name], timeout=KILL_TIMEOUT, env=env, capture=4096)


async def run(request: RunRequest) -> RunResult:
    container = request.spec.get("container")
    try:
        runtime = find_runtime(container if isinstance(container, Mapping) else {}, {**os.environ, **request.env})
        name = container_name(request.job_id)
        argv = container_argv(request, runtime, name=name)
    except SpecError as e:
        return RunResult(None, 0.0, error=str(e))
    try:
        result = await run_process(argv, timeout=request.timeout, env=request.env, cwd=request.folder)
    except asyncio.CancelledError:
        await _kill(runtime, name, request.env)
        raise
    if result.error is not None and result.error.startswith(TIMED_OUT):
        await _kill(runtime, name, request.env)
    elif result.exit_code == 125:
        result = dataclasses.replace(result, error="exit code 125 (the container runtime failed: see stderr)")
    return result
