"""The ``command`` runner: the module is a local program.

``run: {command: [prog, arg, ...]}``; ``{input}``, ``{output}`` and ``{task}`` in the arguments
become the job's paths, and the module contract's variables are in its environment. The folder
of this Python's executable comes first on its PATH, so ``oxidicom-py module NAME`` is the
installation that runs the worker, venv or not.
"""

from __future__ import annotations

import os
import sys

from oxidicom_py.processing.runners.base import RunRequest, RunResult, contract_env, placeholders, run_process


async def run(request: RunRequest) -> RunResult:
    values = {"input": str(request.input_dir), "output": str(request.output_dir), "task": str(request.task_file)}
    argv = placeholders(request.spec["command"], values)
    here = os.path.dirname(sys.executable)
    env = {
        "PATH": os.pathsep.join([here, os.environ.get("PATH", os.defpath)]),
        **contract_env(request.folder, request.input_dir, request.output_dir, request.task_file, request.job_id),
        **request.env,
    }
    return await run_process(argv, timeout=request.timeout, env=env, cwd=request.folder)
