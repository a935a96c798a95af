-- Env families (environments.md): a stack promoted from another points at the family's root
-- (`parent_stack_id`, NULL for a root), and a family holds one stack per env: the unique index
-- is what makes two concurrent promotes to one env produce one target. No foreign key: a root's
-- row goes at its teardown while the stacks promoted from it stay.
-- A release made by a promote names where it came from (`promoted_from`, JSON: source stack,
-- its release and env version; NULL otherwise).
-- The same statements run on both stores, so this file is the same in both migrations/.
ALTER TABLE stacks ADD COLUMN parent_stack_id BIGINT;
CREATE UNIQUE INDEX stacks_family_env ON stacks((COALESCE(parent_stack_id, id)), environment);
ALTER TABLE releases ADD COLUMN promoted_from TEXT;
