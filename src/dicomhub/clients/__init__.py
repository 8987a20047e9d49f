"""The command-line clients of a server (``dicomhub export``, ``dicomhub import``): HTTP clients
built on the standard library, separate from the server's layers (``import --data-dir`` alone
stores through an archive of its own)."""
