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
        integer(0, 65535),
        default=8090,
        shown="`8090`",
        doc=(
            "Port of the console (its pages at `/`, its JSON API under `/api`, the OpenAPI document at "
            "`/openapi.json`). `serve` starts it as a child process (restarted if it dies; not if the port is "
            "taken); `0`: `serve` does not (run `oxidicom-py console` elsewhere, e.g. on another host)."
        ),
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
    console_token: str | None = setting(
        "OXIDICOM_CONSOLE_TOKEN",
        non_empty,
        default=None,
        shown="*(read-only)*",
        doc=(
            "Allows the console's actions (retry or cancel a job, retry a failed delivery) to requests that "
            "carry `Authorization: Bearer {token}` from the console's own origin; checked before anything else "
            "(401 without it, 403 with another). Unset: the console is read-only (every action is a 403)."
        ),
        ours=True,
    )
