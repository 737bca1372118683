"""Example processing modules: programs that follow the module contract (see :mod:`.contract`).

Run one with ``python -m oxidicom_py.modules NAME``:

* ``volume-report``: the volume of the largest bright structure of a 3-D series, as a DICOM SR, a
  Secondary Capture figure and result.json (:mod:`.volume_report`);
* ``burn-in``: every input image with a text burned into its pixels, as a new series (:mod:`.burn_in`).

Each ``main()`` reads the contract's environment and returns the process exit code: 0 done, 1 failed,
2 not given what the contract promises (one line on stderr says why).
"""

from __future__ import annotations

from collections.abc import Callable


def _volume_report() -> int:
    from oxidicom_py.modules import volume_report

    return volume_report.main()


def _burn_in() -> int:
    from oxidicom_py.modules import burn_in

    return burn_in.main()


MODULES: dict[str, Callable[[], int]] = {"volume-report": _volume_report, "burn-in": _burn_in}
"""Module name -> its main() (imported when run: scipy and highdicom load only for the module that needs them)."""


class UnknownModule(KeyError):
    def __str__(self) -> str:
        return f"unknown module {self.args[0]!r}; the modules are: {', '.join(sorted(MODULES))}"


def run(name: str) -> int:
    """Run module ``name``; its exit code. :class:`UnknownModule` (a KeyError) for a name not in MODULES."""
    try:
        main = MODULES[name]
    except KeyError:
        raise UnknownModule(name) from None
    return main()
