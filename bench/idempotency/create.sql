-- The plain create (a time-ordered id, as UUIDv7).
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
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r0::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r0 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r1::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r1 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r2::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r2 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r3::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r3 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r4::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r4 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r5::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r5 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r6::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r6 || '@example.com', 'Bench User', now(), now(), 1);
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r7::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r7 || '@example.com', 'Bench User', now(), now(), 1);
\endpipeline
