"""The one exception tree. Domain words only; each border maps it (web/errors.py)."""

import errno


class DicomhubError(Exception):
    """Base of every error dicomhub raises on purpose."""


class InvalidRequest(DicomhubError):
    """The request is malformed: a bad parameter, UID, header or body."""


class InvalidDicom(InvalidRequest):
    """A part is not a readable DICOM PS3.10 file."""


class Forbidden(DicomhubError):
    """The caller is known, but its roles do not grant the action the request needs."""


class NotFound(DicomhubError):
    """The resource does not exist (or no longer exists)."""


class NotAcceptable(DicomhubError):
    """No representation matches what the client accepts."""


class ConversionFailed(NotAcceptable):
    """Stored pixel data could not be decoded or encoded as asked."""


class ConversionCrashed(DicomhubError):
    """The conversion machinery failed (a worker process died, or a task could not be handed
    to one): the server's fault, not the data's."""


class UnsupportedMediaType(DicomhubError):
    """The request body is of a media type the resource does not take."""


class PayloadTooLarge(DicomhubError):
    """The request body (or one part of it) exceeds the configured limit."""


class Conflict(DicomhubError):
    """The request conflicts with the current state (e.g. the instance exists)."""


class RequestTimeout(DicomhubError):
    """The client stopped sending the request body."""


class RangeNotSatisfiable(DicomhubError):
    """A byte range lies outside the resource."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size

    def __reduce__(self):
        return type(self), (self.args[0], self.size)


class Unavailable(DicomhubError):
    """A dependency (index, blob store) failed; the request may be retried."""

    def __init__(self, dependency: str, message: str):
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency
        self.message = message

    def __reduce__(self):  # it crosses process borders (storage/sqlite_writer.py)
        return type(self), (self.dependency, self.message)


class InsufficientStorage(Unavailable):
    """A write failed for lack of space (a full disk or quota): it will fail again until an
    operator frees or adds space."""


def storage_error(what: str, exc: OSError) -> Unavailable:
    """The error of the tree for a failed file operation: no space is the operator's to fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(what, f"no space left: {exc}")
    return Unavailable(what, str(exc))


class StoreAbandoned(Unavailable):
    """A store committed after the upload timeout, when its version was already given up."""

    def __init__(self, sop: str):
        super().__init__("index", f"the store of SOP instance {sop} was abandoned (too slow)")
        self.sop = sop

    def __reduce__(self):
        return type(self), (self.sop,)


class AlreadyExists(Conflict):
    """The SOP instance is already stored."""


class WorkitemError(DicomhubError):
    """A UPS-RS request refused with a DICOM status code of PS3.4 Annex CC (``C301``: wrong
    Transaction UID, ...), which the answer names (PS3.18 chapter 11: in the Warning header)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # it crosses process borders (storage/sqlite_writer.py)
        return type(self), (self.code, self.args[0])


class WorkitemInvalid(WorkitemError, InvalidRequest):
    """The workitem request is malformed, or the workitem may not take it (PS3.18 11: 400)."""


class WorkitemNotFound(WorkitemError, NotFound):
    """No workitem has this UID (C307)."""


class WorkitemConflict(WorkitemError, Conflict):
    """The request is inconsistent with the workitem's current state (PS3.18 11: 409)."""


class InstanceChanged(Conflict):
    """A bulk update's new version of an instance found it replaced or deleted meanwhile."""


class InstanceMoved(Conflict):
    """An upsert names a SOP instance stored in another study or series: a replace keeps an
    instance where it is (delete it first to move it)."""
