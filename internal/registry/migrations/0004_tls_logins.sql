-- Schema 4: password logins for the gateway's OpenConnect (TLS) engine.

-- A user's password for those logins: an argon2id string as admins' are
-- (salt and parameters inside). NULL: no password, and a TLS login is
-- refused. Existing users get none.
ALTER TABLE users ADD COLUMN password_hash TEXT;

-- What a device speaks. Existing devices are WireGuard devices. An
-- openconnect device is made by its user's first TLS login; its
-- public_key (NOT NULL UNIQUE since schema 1) is then 32 random bytes,
-- not a WireGuard key, and the gateway never makes it a WireGuard peer.
ALTER TABLE devices ADD COLUMN protocol TEXT NOT NULL DEFAULT 'wireguard' CHECK (protocol IN ('wireguard', 'openconnect'));
