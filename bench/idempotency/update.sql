-- The plain update of a random user, returning it.
-- Eight statements in one pipeline, as the service sends them on a connection.
\set n0 random(1, 100000)
\set r0 random(1, 1000000000000)
\set k0 random(1, 9000000000000000000)
\set n1 random(1, 100000)
\set r1 random(1, 1000000000000)
\set k1 random(1, 9000000000000000000)
\set n2 random(1, 100000)
\set r2 random(1, 1000000000000)
\set k2 random(1, 9000000000000000000)
\set n3 random(1, 100000)
\set r3 random(1, 1000000000000)
\set k3 random(1, 9000000000000000000)
\set n4 random(1, 100000)
\set r4 random(1, 1000000000000)
\set k4 random(1, 9000000000000000000)
\set n5 random(1, 100000)
\set r5 random(1, 1000000000000)
\set k5 random(1, 9000000000000000000)
\set n6 random(1, 100000)
\set r6 random(1, 1000000000000)
\set k6 random(1, 9000000000000000000)
\set n7 random(1, 100000)
\set r7 random(1, 1000000000000)
\set k7 random(1, 9000000000000000000)
\startpipeline
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n0 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n0 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n0 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n1 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n1 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n1 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n2 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n2 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n2 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n3 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n3 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n3 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n4 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n4 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n4 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n5 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n5 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n5 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n6 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n6 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n6 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
UPDATE users SET updated_at = now(), version = version + 1, name = 'Bench Renamed' WHERE id = CAST(lpad(to_hex((1700000000000 + CAST(:n7 AS bigint) * 1000) >> 16), 8, '0') || lpad(to_hex((1700000000000 + CAST(:n7 AS bigint) * 1000) & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:n7 AS bigint)), 12, '0') AS uuid) RETURNING id, email, name, created_at, updated_at, version;
\endpipeline
