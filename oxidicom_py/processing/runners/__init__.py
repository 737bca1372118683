"""Module runners: how one attempt of a job runs a module (``command``, ``container``, ``http``).

Each takes a :class:`~oxidicom_py.processing.runners.base.RunRequest` and returns a
:class:`~oxidicom_py.processing.runners.base.RunResult`; none raises for a module's failure.
"""
