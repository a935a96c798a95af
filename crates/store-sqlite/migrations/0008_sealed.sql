-- Encryption at rest (store_sql::seal): each stack's data key and each resource's, wrapped by
-- the master key. NULL means that owner's secrets are still stored plain: a stack created
-- empty, or a row from before this migration; `Ops::seal_stack` (at the first env write, and
-- for every stack at start-up) and the start-up pass over resources seal them, each owner in
-- one transaction, so an interrupted pass resumes where it stopped.
ALTER TABLE stacks ADD COLUMN data_key BLOB;
ALTER TABLE resources ADD COLUMN data_key BLOB;
ALTER TABLE teams ADD COLUMN vault_key BLOB; -- the team vault's data key, created at its first write
