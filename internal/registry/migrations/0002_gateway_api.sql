-- Each gateway's own enrollment API and the pin of its certificate, so
-- that a profile names the API of every gateway it may use, and trusts
-- each one (several gateways on one PostgreSQL registry).
ALTER TABLE gateways ADD COLUMN api TEXT NOT NULL DEFAULT '';
ALTER TABLE gateways ADD COLUMN pin TEXT NOT NULL DEFAULT '';
