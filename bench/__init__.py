"""The benchmark: dicomhub against Orthanc on the same machine, data and client (``run``), and
search at scale on a synthetic index (``search.py``)."""
