"""Telemetry: the Prometheus metrics of every process (prometheus-client lives here only).

``instruments`` holds the metrics the adapters record, ``seams`` times the index and the blob
store around their protocols, ``exposition`` renders a scrape: the sum over every process of a
``serve --workers N`` (prometheus-client's multiprocess mode, in a folder the supervisor owns).
"""
