-- The id of the HTTP request an audit entry records (X-Request-Id: also in the response and the
-- logs), to find one request's entry.
ALTER TABLE audit_log ADD COLUMN request_id TEXT;
CREATE INDEX audit_log_request ON audit_log (request_id);
