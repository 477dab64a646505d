-- Schema 1: the first registry. Shared by SQLite and PostgreSQL; the only
-- differences are the tokens {{ID}} (an auto-increment primary key that
-- never reuses a value) and {{BYTES}} (BLOB / BYTEA), which migrate.go
-- replaces per dialect. Times are BIGINT Unix microseconds, UTC.

-- The change sequence: one row, bumped (UPDATE ... RETURNING) by every
-- change. The row lock it takes on PostgreSQL serialises writers until
-- commit, so sequence numbers become visible in order.
CREATE TABLE registry_seq (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	seq BIGINT NOT NULL
);
INSERT INTO registry_seq (id, seq) VALUES (1, 0);

CREATE TABLE users (
	id {{ID}},
	name TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	removed_at BIGINT
);
-- A removed user's row stays (its revoked devices point at it); its name is free again.
CREATE UNIQUE INDEX users_name ON users (name) WHERE removed_at IS NULL;

CREATE TABLE user_groups (
	id {{ID}},
	name TEXT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
	group_id BIGINT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
	user_id BIGINT NOT NULL REFERENCES users (id),
	PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

CREATE TABLE pools (
	id {{ID}},
	cidr TEXT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL
);

CREATE TABLE devices (
	id {{ID}},
	user_id BIGINT NOT NULL REFERENCES users (id),
	name TEXT NOT NULL,
	public_key {{BYTES}} NOT NULL UNIQUE CHECK (length(public_key) = 32),
	created_at BIGINT NOT NULL,
	last_seen_at BIGINT,
	revoked_at BIGINT
);
-- A name is unique among a user's active devices: "laptop" can be enrolled
-- again after the old laptop was revoked. A key is unique for ever.
CREATE UNIQUE INDEX devices_user_name ON devices (user_id, name) WHERE revoked_at IS NULL;

-- One row per (active device, pool); deleted on revoke, which frees the address.
CREATE TABLE device_addresses (
	device_id BIGINT NOT NULL REFERENCES devices (id),
	pool_id BIGINT NOT NULL REFERENCES pools (id),
	addr TEXT NOT NULL,
	PRIMARY KEY (device_id, pool_id),
	UNIQUE (pool_id, addr)
);

CREATE TABLE invites (
	id {{ID}},
	prefix TEXT NOT NULL UNIQUE,
	secret_hash {{BYTES}} NOT NULL CHECK (length(secret_hash) = 32),
	user_id BIGINT NOT NULL REFERENCES users (id),
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	uses_left INTEGER NOT NULL CHECK (uses_left >= 0)
);

CREATE TABLE rules (
	id {{ID}},
	group_id BIGINT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
	dest TEXT NOT NULL,
	proto TEXT NOT NULL CHECK (proto IN ('', 'tcp', 'udp', 'icmp')),
	port_from INTEGER NOT NULL CHECK (port_from BETWEEN 0 AND 65535),
	port_to INTEGER NOT NULL CHECK (port_to BETWEEN port_from AND 65535),
	created_at BIGINT NOT NULL
);
CREATE INDEX rules_group ON rules (group_id);

CREATE TABLE gateways (
	id {{ID}},
	name TEXT NOT NULL UNIQUE,
	public_key {{BYTES}} NOT NULL UNIQUE CHECK (length(public_key) = 32),
	endpoint TEXT NOT NULL,
	created_at BIGINT NOT NULL
);

CREATE TABLE audit (
	id {{ID}},
	seq BIGINT NOT NULL,
	at BIGINT NOT NULL,
	actor TEXT NOT NULL,
	action TEXT NOT NULL,
	target TEXT NOT NULL,
	detail TEXT NOT NULL
);

CREATE TABLE changes (
	seq BIGINT PRIMARY KEY,
	kind TEXT NOT NULL,
	object_id BIGINT NOT NULL,
	at BIGINT NOT NULL
);
