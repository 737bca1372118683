"""The shapes of the console API's answers (pydantic models: the OpenAPI document is made from
them, and every answer is validated against them)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel

SeriesState = Literal["receiving", "complete", "incomplete"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DeliveryState = Literal["pending", "sent", "failed"]


class Marker(BaseModel):
    key: str
    value: str
    creation_date: dt.datetime


class Series(BaseModel):
    pacs: str
    series_uid: str
    study_uid: str
    patient_id: str
    state: SeriesState
    end_reason: str | None
    expected: int | None
    received: int
    first_received: dt.datetime | None
    last_received: dt.datetime | None
    completed: dt.datetime | None
    updated: dt.datetime
    open_associations: int
    modality: str | None
    study_description: str | None
    series_description: str | None


class Association(BaseModel):
    ulid: str
    calling_ae: str
    called_ae: str
    peer_address: str
    peer_port: int
    tls_subject: str | None
    started: dt.datetime
    ended: dt.datetime
    received: int
    stored: int
    rejected: int
    failed: int
    duplicate: int
    unregistered: int
    bytes: int
    outcome: str
    first_error: str | None
    series_uids: list[str]


class Delivery(BaseModel):
    id: int
    job_id: int
    destination: str
    ae_title: str | None
    host: str | None
    port: int | None
    sop_instance_uid: str
    state: DeliveryState
    attempts: int
    max_attempts: int
    last_status: int | None
    last_error: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None


class Job(BaseModel):
    id: int
    rule: str
    level: str
    pacs: str | None
    study_uid: str
    series_uids: list[str]
    state: JobState
    reason: str | None
    attempts: int
    max_attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration: float | None
    last_error: str | None
    exit_code: int | None
    outputs: list[Any]
    worker: str | None
    log_excerpt: str | None


class JobDetail(Job):
    history: list[Any]
    deliveries: list[Delivery]


class SeriesDetail(Series):
    files: int
    markers: list[Marker]
    associations: list[Association]
    jobs: list[Job]
    deliveries: list[Delivery]


class Done(BaseModel):
    detail: str


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class SeriesPage(Page):
    items: list[Series]


class JobsPage(Page):
    items: list[Job]


class DeliveriesPage(Page):
    items: list[Delivery]


class AssociationsPage(Page):
    items: list[Association]


class Receiver(BaseModel):
    instance_id: str
    host: str
    started: dt.datetime
    heartbeat_age: float


class Health(BaseModel):
    database: Literal["ok"]
    series_receiving: int
    jobs_queued: int
    jobs_running: int
    deliveries_failed: int
    queue_depth: int
    """Jobs waiting in the job engine's queue (procrastinate ``todo``)."""
    processing_workers: int
    """Processing workers whose heartbeat is under a minute old."""
    associations_today: int
    receivers: list[Receiver]
