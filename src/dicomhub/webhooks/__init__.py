"""Webhooks (issue 23): the events (CloudEvents 1.0 or Event Grid), their Standard Webhooks
signatures, the targets allowed, and the HTTP client that delivers them (the only place here
that sends HTTP requests but the FHIR client)."""
