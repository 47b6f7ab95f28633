-- Not shipped: a time-ordered id, the key in the user's row under a unique partial index, a probe of the keys' table (a deleted user's key).
-- Needs: ALTER TABLE users ADD COLUMN key_hash uuid, ADD COLUMN key_fingerprint uuid, ADD COLUMN key_expires_at_secs bigint;
--        CREATE UNIQUE INDEX ON users (key_hash) WHERE key_hash IS NOT NULL;
-- Eight statements in one pipeline, as the service sends them on a connection.
\set r0 random(1, 1000000000000)
\set k0 random(1, 9000000000000000000)
\set r1 random(1, 1000000000000)
\set k1 random(1, 9000000000000000000)
\set r2 random(1, 1000000000000)
\set k2 random(1, 9000000000000000000)
\set r3 random(1, 1000000000000)
\set k3 random(1, 9000000000000000000)
\set r4 random(1, 1000000000000)
\set k4 random(1, 9000000000000000000)
\set r5 random(1, 1000000000000)
\set k5 random(1, 9000000000000000000)
\set r6 random(1, 1000000000000)
\set k6 random(1, 9000000000000000000)
\set r7 random(1, 1000000000000)
\set k7 random(1, 9000000000000000000)
\startpipeline
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r0::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r0 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r0)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k0) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r0)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r1::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r1 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r1)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k1) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r1)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r2::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r2 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r2)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k2) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r2)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r3::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r3 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r3)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k3) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r3)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r4::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r4 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r4)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k4) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r4)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r5::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r5 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r5)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k5) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r5)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r6::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r6 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r6)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k6) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r6)::uuid);
INSERT INTO users (id, email, name, created_at, updated_at, version, key_hash, key_fingerprint, key_expires_at_secs) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r7::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r7 || '@example.com', 'Bench User', now(), now(), 1, md5(:client_id || '-' || :r7)::uuid, md5('x')::uuid, extract(epoch FROM now())::bigint + 86400 WHERE pg_try_advisory_xact_lock(:k7) AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key_hash = md5(:client_id || '-' || :r7)::uuid);
\endpipeline
