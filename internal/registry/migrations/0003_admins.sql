-- Schema 3: the gateway's administrators, their API tokens and their
-- login sessions (the admin API). Secrets are stored hashed: a password as
-- an argon2id string that carries its salt and parameters, a token's and a
-- session's 256 random bits as their SHA-256, looked up by a public prefix
-- as invites are.

CREATE TABLE admins (
	id {{ID}},
	name TEXT NOT NULL,
	password_hash TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	disabled_at BIGINT
);
-- A removed (disabled) admin's row stays for the audit trail; the name is free again.
CREATE UNIQUE INDEX admins_name ON admins (name) WHERE disabled_at IS NULL;

CREATE TABLE admin_tokens (
	id {{ID}},
	prefix TEXT NOT NULL UNIQUE,
	secret_hash {{BYTES}} NOT NULL CHECK (length(secret_hash) = 32),
	admin_id BIGINT NOT NULL REFERENCES admins (id),
	created_at BIGINT NOT NULL,
	revoked_at BIGINT
);
CREATE INDEX admin_tokens_admin ON admin_tokens (admin_id);

-- A session row exists while the session lives: logout deletes it.
CREATE TABLE admin_sessions (
	id {{ID}},
	prefix TEXT NOT NULL UNIQUE,
	secret_hash {{BYTES}} NOT NULL CHECK (length(secret_hash) = 32),
	admin_id BIGINT NOT NULL REFERENCES admins (id),
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX admin_sessions_admin ON admin_sessions (admin_id);
