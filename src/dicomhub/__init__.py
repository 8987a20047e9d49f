"""dicomhub: an open-source DICOMweb server."""

__version__ = "0.1.0"
