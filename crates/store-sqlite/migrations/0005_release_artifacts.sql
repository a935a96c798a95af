-- Artifact retention: which artifacts each release uses, so that the job deleting a stack can
-- tell, with an index and not by reading every release's spec, which artifacts no release
-- references any more. Mirrors crates/store-postgres/migrations/0004.
CREATE TABLE release_artifacts (
    stack_id  INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    digest    TEXT    NOT NULL,
    PRIMARY KEY (stack_id, version, digest),
    FOREIGN KEY (stack_id, version) REFERENCES releases(stack_id, version) ON DELETE CASCADE
) STRICT;

CREATE INDEX release_artifacts_digest ON release_artifacts(digest);

-- Releases written before this migration.
INSERT OR IGNORE INTO release_artifacts (stack_id, version, digest)
SELECT r.stack_id, r.version, json_extract(s.value, '$.artifact')
FROM releases r, json_each(r.spec) s
WHERE json_extract(s.value, '$.artifact') IS NOT NULL;
