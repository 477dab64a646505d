-- Schema 5: each gateway's OpenConnect (TLS) listener, https://HOST:PORT,
-- so that a profile names where to reach every gateway over TLS as well
-- as over WireGuard. Its certificate is the API's, pinned by pin (schema
-- 2). Existing gateways get '' (none): a gateway with a TLS listener
-- records it the next time it runs.
ALTER TABLE gateways ADD COLUMN tls TEXT NOT NULL DEFAULT '';
