"""The console: an HTTP JSON API (and, later, web pages) over the database only, in a process of
its own (``oxidicom-py console``), so it can never slow reception and can run on another host."""
