-- Artifact blobs (kubernetes.md, "Code without an image registry"): each uploaded tarball is
-- kept here as well as in the receiving server's data directory, so that every API replica
-- sharing this database can serve it to a pod. Removed like the file: once no release uses
-- it (release_artifacts) and `touched_at`, refreshed by every create that relies on it, is
-- older than the grace period.
CREATE TABLE artifact_blobs (
    digest      TEXT   PRIMARY KEY,
    bytes       BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL,
    touched_at  BIGINT NOT NULL
);
CREATE INDEX artifact_blobs_touched ON artifact_blobs(touched_at);
