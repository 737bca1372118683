"""The ``container`` runner, against a stand-in runtime (no container engine runs here).

The stand-in is a small Python script named ``docker`` or ``podman`` in a temporary folder: it
appends its argv to ``calls.jsonl`` next to itself and, for ``run``, emulates a container from
the ``-v`` mounts and the image name: ``copy`` copies the inputs into the output mount and
writes what it was told; ``fail`` exits 3; ``sleep`` hangs (until killed); ``kill`` exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from oxidicom_py.processing.runners import container
from oxidicom_py.processing.runners.base import TIMED_OUT, RunRequest

STAND_IN = textwrap.dedent(
    """\
    #!{python}
    import json, os, shutil, sys, time
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    with open(os.path.join(here, "calls.jsonl"), "a") as log:
        log.write(json.dumps(sys.argv) + "\\n")
    args = sys.argv[1:]
    if args[0] != "run":
        sys.exit(0)
    mounts, env = {{}}, {{}}
    for flag, value in zip(args, args[1:]):
        if flag == "-v":
            host, target, _mode = value.split(":")
            mounts[target] = host
        elif flag == "-e":
            key, _, val = value.partition("=")
            env[key] = val
    image, *command = args[args.index("ALL") + 1:]
    if image == "copy":
        source, target = mounts[env["OXIDICOM_INPUT_DIR"]], mounts[env["OXIDICOM_OUTPUT_DIR"]]
        for name in os.listdir(source):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, "copy-" + name))
        with open(os.path.join(target, "told.json"), "w") as f:
            json.dump({{"env": env, "command": command}}, f)
        print("to stdout")
        print("to stderr", file=sys.stderr)
    elif image == "fail":
        print("boom", file=sys.stderr)
        sys.exit(3)
    elif image == "sleep":
        time.sleep(60)
    """
)


def stand_in(folder: Path, name: str = "docker") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    return script


def calls(script: Path) -> list[list[str]]:
    log = script.parent / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def job(tmp_path: Path, container_spec: dict[str, object], timeout: float = 20, **env: str) -> RunRequest:
    folder = tmp_path / "job-7"
    (folder / "input").mkdir(parents=True, exist_ok=True)
    (folder / "output").mkdir(exist_ok=True)
    (folder / "input" / "a.dcm").write_bytes(b"input bytes")
    (folder / "task.json").write_text("{}")
    return RunRequest(7, folder, {"container": container_spec, "timeout": timeout}, timeout, env)


def contract(request: RunRequest) -> list[str]:
    folder = request.folder.resolve()
    return [
        "-v", f"{folder}/input:/input:ro", "-v", f"{folder}/output:/output:rw",
        "-v", f"{folder}/task.json:/task.json:ro",
        "-e", "OXIDICOM_INPUT_DIR=/input", "-e", "OXIDICOM_OUTPUT_DIR=/output", "-e", "OXIDICOM_TASK=/task.json",
        "-e", "MERCURE_IN_DIR=/input", "-e", "MERCURE_OUT_DIR=/output",
        "-e", "MONAI_INPUTPATH=/input", "-e", "MONAI_OUTPUTPATH=/output", "-e", "OXIDICOM_JOB_ID=7",
    ]  # fmt: skip


LOCKDOWN = ["--security-opt", "no-new-privileges", "--cap-drop", "ALL"]


def test_docker_argv_is_locked_down_by_default(tmp_path: Path) -> None:
    request = job(tmp_path, {"image": "example/seg:1", "command": ["seg", "--in", "{input}", "--task={task}"]})
    user = f"{os.getuid()}:{os.getgid()}"
    assert container.container_argv(request, "/usr/bin/docker", name="n") == [
        "/usr/bin/docker", "run", "--rm", "--name", "n", "--network", "none", *contract(request),
        "--user", user, *LOCKDOWN, "example/seg:1", "seg", "--in", "/input", "--task=/task.json",
    ]  # fmt: skip


def test_docker_argv_with_limits_gpus_network_env_and_user(tmp_path: Path) -> None:
    spec = {
        "image": "img",
        "network": True,
        "cpus": 2,
        "memory": "4g",
        "gpus": "device=0,1",
        "env": {"MODEL": "fast", "PATH": "/not/passed"},
        "user": "0:0",
    }
    request = job(tmp_path, spec, RULE_LEVEL="x", PATH="/host/bin", OXIDICOM_CONTAINER_RUNTIME="docker")
    assert container.container_argv(request, "docker", name="n") == [
        "docker", "run", "--rm", "--name", "n", *contract(request), "--cpus", "2", "--memory", "4g",
        "--gpus", '"device=0,1"', "-e", "RULE_LEVEL=x", "-e", "MODEL=fast", "--user", "0:0", *LOCKDOWN, "img",
    ]  # fmt: skip
    named = container.container_argv(job(tmp_path, {"image": "img", "network": "lab", "gpus": 1}), "docker", name="n")
    assert named[5:7] == ["--network", "lab"] and named[named.index("--gpus") + 1] == "1"
    assert container.container_argv(job(tmp_path, {"image": "i", "gpus": "all", "cpus": 0.5}), "docker")[-11:-7] == [
        "--cpus", "0.5", "--gpus", "all"
    ]  # fmt: skip


def test_podman_argv_uses_cdi_devices_and_keeps_our_uid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container.os, "getuid", lambda: 0)
    monkeypatch.setattr(container.os, "getgid", lambda: 0)
    request = job(tmp_path, {"image": "img", "gpus": "all", "memory": "8g", "network": False})
    assert container.container_argv(request, "/opt/podman", name="n") == [
        "/opt/podman", "run", "--rm", "--name", "n", "--network", "none", *contract(request), "--memory", "8g",
        "--device", "nvidia.com/gpu=all", "--user", "0:0", *LOCKDOWN, "img",
    ]  # fmt: skip
    monkeypatch.setattr(container.os, "getuid", lambda: 1000)
    monkeypatch.setattr(container.os, "getgid", lambda: 1001)
    request = job(tmp_path, {"image": "img", "gpus": 2, "network": True})
    assert container.container_argv(request, "podman", name="n") == [
        "podman", "run", "--rm", "--name", "n", *contract(request),
        "--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1",
        "--user", "1000:1001", "--userns", "keep-id", *LOCKDOWN, "img",
    ]  # fmt: skip
    listed = container.container_argv(job(tmp_path, {"image": "img", "gpus": "device=1,3"}), "podman")
    assert [a for a in listed if a.startswith("nvidia.com/")] == ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "container.image"),
        ({"image": "i", "command": "not a list"}, "container.command"),
        ({"image": "i", "network": 3}, "container.network"),
        ({"image": "i", "gpus": 0}, "container.gpus"),
        ({"image": "i", "cpus": True}, "container.cpus"),
        ({"image": "i", "env": {"A=B": "c"}}, "container.env"),
    ],
)
def test_bad_specs_are_errors_not_exceptions(tmp_path: Path, spec: dict[str, object], message: str) -> None:
    script = stand_in(tmp_path / "bin")
    result = asyncio.run(container.run(job(tmp_path, {**spec, "runtime": str(script)})))
    assert not result.ok and message in (result.error or "") and calls(script) == []


def test_runtime_selection_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker = stand_in(tmp_path / "a", "docker")
    podman = stand_in(tmp_path / "b", "podman")
    path = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    env = {"PATH": path, container.RUNTIME_ENV: str(podman)}
    assert container.find_runtime({"runtime": str(docker)}, env) == str(docker)  # spec over the variable
    assert container.find_runtime({}, env) == str(podman)  # the variable over PATH
    assert container.find_runtime({}, {"PATH": path}) == str(docker)  # docker before podman
    assert container.find_runtime({"runtime": "podman"}, {"PATH": path}) == str(podman)  # names are looked up
    with pytest.raises(container.SpecError, match=r"'nerdctl' \(from container\.runtime\) not found"):
        container.find_runtime({"runtime": "nerdctl"}, env)
    # a PATH with only a podman: the runner finds and runs it
    only = stand_in(tmp_path / "only", "podman")
    monkeypatch.delenv(container.RUNTIME_ENV, raising=False)
    monkeypatch.setenv("PATH", str(only.parent))
    result = asyncio.run(container.run(job(tmp_path, {"image": "copy"})))
    assert result.ok, result
    assert [c[:2] for c in calls(only)] == [[str(only), "run"]]


def test_no_runtime_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.delenv(container.RUNTIME_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = asyncio.run(container.run(job(tmp_path, {"image": "copy"})))
    assert result.error == container.NO_RUNTIME and result.exit_code is None
    assert result.error == "no container runtime: install docker or podman, or set OXIDICOM_CONTAINER_RUNTIME"


def test_a_run_mounts_the_job_and_captures_its_output(tmp_path: Path) -> None:
    script = stand_in(tmp_path / "bin")
    request = job(
        tmp_path,
        {"image": "copy", "command": ["go", "{output}"], "env": {"K": "V"}},
        OXIDICOM_CONTAINER_RUNTIME=str(script),
    )
    result = asyncio.run(container.run(request))
    assert result.ok and result.exit_code == 0, result
    assert result.stdout == "to stdout\n" and result.stderr == "to stderr\n"
    assert (request.output_dir / "copy-a.dcm").read_bytes() == b"input bytes"
    told = json.loads((request.output_dir / "told.json").read_text())
    assert told["command"] == ["go", "/output"]
    assert told["env"]["K"] == "V" and told["env"]["OXIDICOM_TASK"] == "/task.json"
    assert container.RUNTIME_ENV not in told["env"]
    (argv,) = calls(script)
    assert argv[4].startswith("oxidicom-job-7-") and len(argv[4]) == len("oxidicom-job-7-") + 8


def test_the_exit_code_is_propagated(tmp_path: Path) -> None:
    script = stand_in(tmp_path / "bin")
    result = asyncio.run(container.run(job(tmp_path, {"image": "fail", "runtime": str(script)})))
    assert (result.exit_code, result.error, result.stderr) == (3, "exit code 3", "boom\n")


def test_a_timeout_kills_the_client_and_the_container(tmp_path: Path) -> None:
    script = stand_in(tmp_path / "bin")
    started = time.monotonic()
    result = asyncio.run(container.run(job(tmp_path, {"image": "sleep", "runtime": str(script)}, timeout=1)))
    assert time.monotonic() - started < 10
    assert result.error is not None and result.error.startswith(TIMED_OUT)
    run_call, kill_call = calls(script)
    name = run_call[run_call.index("--name") + 1]
    assert name.startswith("oxidicom-job-7-")
    assert kill_call == [str(script), "kill", name]


def test_a_cancelled_attempt_kills_the_container_too(tmp_path: Path) -> None:
    script = stand_in(tmp_path / "bin")
    request = job(tmp_path, {"image": "sleep", "runtime": str(script)}, timeout=30)

    async def main() -> None:
        task = asyncio.create_task(container.run(request))
        deadline = time.monotonic() + 10
        while not calls(script):  # the stand-in has started
            assert time.monotonic() < deadline, "the stand-in never ran"
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [c[1] for c in calls(script)] == ["run", "kill"]
