-- Artifact retention: which artifacts each release uses, so that the job deleting a stack can
-- tell, with an index and not by reading every release's spec, which artifacts no release
-- references any more. Mirrors crates/store-sqlite/migrations/0004.
CREATE TABLE release_artifacts (
    stack_id  BIGINT NOT NULL,
    version   BIGINT NOT NULL,
    digest    TEXT   NOT NULL,
    PRIMARY KEY (stack_id, version, digest),
    FOREIGN KEY (stack_id, version) REFERENCES releases(stack_id, version) ON DELETE CASCADE
);

CREATE INDEX release_artifacts_digest ON release_artifacts(digest);

-- Releases written before this migration.
INSERT INTO release_artifacts (stack_id, version, digest)
SELECT DISTINCT r.stack_id, r.version, s->>'artifact'
FROM releases r, jsonb_array_elements(r.spec) s
WHERE s->>'artifact' IS NOT NULL;
