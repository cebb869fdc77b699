-- Least privilege for the clinician API's PostgreSQL role (countyfl serve).
--
-- The API reads the registry and writes the audit log, nothing else: it may append audit
-- entries and checkpoints, but never UPDATE, DELETE or TRUNCATE them, so a compromised API
-- process cannot rewrite the audit trail (and the append-only triggers are a second line).
-- It cannot change users, tokens, versions or thresholds either, except rehashing a
-- password it has just verified (argon2 parameters upgraded). Migrations run as the
-- schema's owner (any `countyfl users` / `countyfl registry` command runs them); the API
-- finds the schema current at startup and changes nothing.
--
-- Run it as the owner of the schema, with {role} and {schema} replaced (psql:
-- sed 's/{role}/countyfl_api/g; s/{schema}/public/g' api_role.sql | psql ...), after
-- CREATE ROLE countyfl_api LOGIN PASSWORD '...'. countyfl.storage.api_role_statements
-- returns these statements with the names filled in and checked.

REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role};
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT ON alembic_version TO {role};
GRANT SELECT ON users, api_tokens, registry_settings TO {role};
GRANT UPDATE (password_hash) ON users TO {role};
GRANT SELECT ON registry_model_versions, registry_version_institutions,
    registry_stage_transitions, registry_thresholds, registry_evaluations TO {role};
GRANT SELECT, INSERT ON audit_entries, audit_checkpoints TO {role};
GRANT USAGE ON SEQUENCE audit_checkpoints_id_seq TO {role};
-- The head row is moved by every append (SELECT ... FOR UPDATE needs UPDATE).
GRANT SELECT, UPDATE ON audit_head TO {role};
