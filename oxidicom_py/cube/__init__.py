"""Telling current ChRIS (CUBE 6 and later) what arrived, as oxidicom v3/v4 does: a Celery task
per series and association that CUBE's worker registers the series with, and LONK progress
messages over NATS that CUBE relays to ChRIS_ui. Fed by the series bookkeeping
(:mod:`oxidicom_py.completion.tracker`); never holds up reception."""
