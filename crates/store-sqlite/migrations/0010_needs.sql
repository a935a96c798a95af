-- `needs:` stack-owned resources (`needs: [postgres]`): the stack that owns a resource and the
-- env name it is injected as, which is how a redeploy finds it again. NULL for resources made
-- by POST /db/new or /cache/new. No foreign key: the row must outlive the stack row until the
-- teardown job has dropped the database or user it names.
-- The same statements run on both stores, so this file is the same in both migrations/.
ALTER TABLE resources ADD COLUMN stack_id BIGINT;
ALTER TABLE resources ADD COLUMN stack_env TEXT;
CREATE UNIQUE INDEX resources_stack_env ON resources(stack_id, stack_env) WHERE stack_id IS NOT NULL;
