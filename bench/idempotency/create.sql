\set r random(1, 1000000000000)
INSERT INTO users (id, email, name, created_at, updated_at, version) VALUES (gen_random_uuid(), 'fb-' || :client_id || '-' || :r || '@example.com', 'Bench User', now(), now(), 1);
