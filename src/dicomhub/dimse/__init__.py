"""The DIMSE adapter: DICOM network services over the same archive as the web API."""
