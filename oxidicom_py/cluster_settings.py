"""Settings for running several receivers on one database and one files root: who this
instance is, and when another one counts as gone."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from oxidicom_py.receive_settings import ReceiveSettings
from oxidicom_py.setting_fields import setting
from oxidicom_py.setting_parsers import (
    SettingsError,
    choice,
    networks,
    non_negative_float,
    parse_bool,
    positive_float,
)

_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def instance_id(name: str, raw: str) -> str:
    """A folder name on every host: letters, digits, ``.``, ``_``, ``-``; at most 63 characters."""
    value = raw.strip()
    if not _INSTANCE_ID.fullmatch(value):
        raise SettingsError(
            f"{name}: {raw!r} is not a valid instance id (1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return value


def default_instance_id(port: int) -> str:
    """``{host name}-{port}`` (a pod's name in Kubernetes; the port tells apart two receivers
    on one host), made into a valid instance id."""
    suffix = f"-{port}"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[: 63 - len(suffix)]
    return (cleaned or "oxidicom") + suffix


@dataclass(frozen=True, slots=True)
class ClusterSettings(ReceiveSettings):
    """The receiving half, plus what several instances sharing storage and database need."""

    instance_id: str | None = setting(
        "OXIDICOM_INSTANCE_ID",
        instance_id,
        default=None,
        shown="`{host name}-{OXIDICOM_LISTENER_PORT}`",
        doc=(
            "This receiver's name among those sharing the database and files root (must differ between "
            "them; the pod name in Kubernetes). Its staging files live in "
            "`{FILES_ROOT}/.oxidicom-staging/{INSTANCE_ID}/`, and its heartbeat in the "
            "`oxidicom_instances` table. Setting it explicitly means a cluster: the embedded database "
            "is then refused."
        ),
        ours=True,
    )
    instance_stale_after: float = setting(
        "OXIDICOM_INSTANCE_STALE_AFTER",
        positive_float,
        default=60.0,
        shown="`60`",
        doc=(
            "Seconds without a heartbeat (sent every tenth of it) after which another instance counts "
            "as gone: any live instance then removes its staging folder (files never acknowledged). An "
            "instance starting with the id of one whose heartbeat is still fresh waits for it to stop "
            "advancing, and refuses to start if it does not."
        ),
        ours=True,
    )
    reconcile_interval: float = setting(
        "OXIDICOM_RECONCILE_INTERVAL",
        non_negative_float,
        default=60.0,
        shown="`60`",
        doc=(
            "Seconds between reconciliation passes (stored files without a row, e.g. those a crashed "
            "receiver host acknowledged, are registered). One instance at a time runs a pass (a PostgreSQL "
            "advisory lock); a periodic pass only lists series folders changed since the last one. A "
            "full pass still runs at start-up. `0`: only at start-up and after a worker died."
        ),
        ours=True,
    )
    reconcile_grace: float = setting(
        "OXIDICOM_RECONCILE_GRACE",
        non_negative_float,
        default=10.0,
        shown="`10` (with `OXIDICOM_INSTANCE_ID` set; else `0`)",
        doc=(
            "With several receivers, a file is reconciled only once it has been in its series folder this "
            "many seconds, so a pass never registers a file whose row another live receiver is about to "
            "commit (that takes at most 5 times `OXIDICOM_DB_LINGER_MS` plus a round trip, except during a "
            "database outage). A crashed host's acknowledged files are registered within "
            "`OXIDICOM_RECONCILE_INTERVAL` plus this."
        ),
        ours=True,
        derive=lambda v: 10.0 if v["instance_id"] is not None else 0.0,
    )
    db_migrate: str = setting(
        "OXIDICOM_DB_MIGRATE",
        choice("auto", "off"),
        default="auto",
        shown="`auto`",
        doc=(
            "`auto`: `serve` creates or upgrades the schema itself at start (the one-machine case; an index "
            "missing on an existing CUBE table is built `CONCURRENTLY`). `off`: it only checks the schema "
            "and stops with one line naming what is missing; a cluster runs `oxidicom-py migrate` once "
            "instead (a Kubernetes Job), so receivers need no CREATE rights."
        ),
        ours=True,
    )
    drain_delay: float = setting(
        "OXIDICOM_DRAIN_DELAY",
        non_negative_float,
        default=0.0,
        shown="`0`",
        doc=(
            "Seconds between SIGTERM and closing the listener. Meanwhile `/readyz` already answers 503 and "
            "new associations are still accepted, so a load balancer that checks health every few seconds "
            "stops sending before the port closes (no connection then waits in a backlog nobody reads). "
            "Set it above the balancer's check interval times its fall count (the shipped HAProxy config: "
            "3 or more; Kubernetes: 10). A second signal skips the rest of it."
        ),
        ours=True,
    )
    proxy_protocol: bool = setting(
        "OXIDICOM_PROXY_PROTOCOL",
        parse_bool,
        default=False,
        shown="`false`",
        doc=(
            "Behind a TCP load balancer that sends a PROXY protocol v2 header (HAProxy `send-proxy-v2`, "
            "an NLB with proxy protocol on): read it first, so logs, spans, metrics and "
            "`OXIDICOM_SCP_ALLOWED_NETWORKS` see the sender's own address. Connections from outside "
            "`OXIDICOM_PROXY_NETWORKS`, and malformed headers, are dropped and counted "
            '(`oxidicom_associations_rejected_total{reason="proxy_..."}`). Not with the pynetdicom acceptor.'
        ),
        ours=True,
    )
    proxy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = setting(
        "OXIDICOM_PROXY_NETWORKS",
        networks,
        default=None,
        shown="*(required with the PROXY protocol)*",
        doc="Comma-separated networks of the load balancers allowed to send a PROXY header (`10.0.0.0/8`).",
        ours=True,
    )

    @property
    def instance(self) -> str:
        """This instance's id: ``OXIDICOM_INSTANCE_ID``, else ``{host name}-{port}``."""
        return self.instance_id if self.instance_id is not None else default_instance_id(self.listener_port)

    @property
    def clustered(self) -> bool:
        """An instance id set explicitly: other instances may share the database and files root."""
        return self.instance_id is not None
