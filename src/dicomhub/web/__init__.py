"""HTTP adapter (ASGI, Starlette): DICOMweb and Microsoft-compatible routes."""
