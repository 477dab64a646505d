-- Each gateway's own enrollment API, so that a profile can name the API of
-- every gateway it may use (several gateways on one PostgreSQL registry).
ALTER TABLE gateways ADD COLUMN api TEXT NOT NULL DEFAULT '';
