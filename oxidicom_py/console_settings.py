"""Settings of the console (``oxidicom-py console``): where it listens and what it shows."""

from __future__ import annotations

from dataclasses import dataclass

from oxidicom_py.cube_settings import CubeSettings
from oxidicom_py.setting_fields import setting
from oxidicom_py.setting_parsers import integer, non_empty, parse_bool


@dataclass(frozen=True, slots=True)
class ConsoleSettings(CubeSettings):
    """The receiving half, several instances, CUBE's, and the console's."""

    console_address: str = setting(
        "OXIDICOM_CONSOLE_ADDRESS",
        non_empty,
        default="127.0.0.1",
        shown="`127.0.0.1`",
        doc="Address `oxidicom-py console` listens on (only this machine by default: it shows patient data).",
        ours=True,
    )
    console_port: int = setting(
        "OXIDICOM_CONSOLE_PORT",
        integer(1, 65535),
        default=8090,
        shown="`8090`",
        doc="Port of `oxidicom-py console` (its JSON API under `/api`, the OpenAPI document at `/openapi.json`).",
        ours=True,
    )
    console_show_phi: bool = setting(
        "OXIDICOM_CONSOLE_SHOW_PHI",
        parse_bool,
        default=False,
        shown="`false`",
        doc=(
            "`true`: the console shows PatientIDs as they are. `false`: as a short hash (`sha256:` and 10 hex "
            "digits, the same for the same ID), as the logs avoid them too."
        ),
        ours=True,
    )
