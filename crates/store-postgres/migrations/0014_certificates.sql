-- TLS for custom domains (environments.md): each verified domain's ACME certificate, its key
-- sealed by a data key of its own (wrapped by the master key, like a resource's), renewed from
-- `renew_at` on; the ACME account of each directory, sealed the same way; on the domain, the
-- last order's error and when an order was last claimed (a lease between servers).
CREATE TABLE certificates (
    domain_id   TEXT PRIMARY KEY REFERENCES domains(id) ON DELETE CASCADE,
    chain_pem   TEXT NOT NULL,
    key_sealed  BYTEA NOT NULL,
    data_key    BYTEA NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    renew_at    BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL
);
CREATE INDEX certificates_renew ON certificates(renew_at);
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    credentials BYTEA NOT NULL,
    data_key    BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
ALTER TABLE domains ADD COLUMN cert_error TEXT;
ALTER TABLE domains ADD COLUMN cert_attempt_at BIGINT;
