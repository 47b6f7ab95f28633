-- The plain create (a time-ordered id, as UUIDv7).
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7' || substr(md5(:r::text), 1, 19))::uuid, 'fb-' || :client_id || '-' || :r || '@example.com', 'Bench User', now(), now(), 1);
