-- The privileges on public.users, exactly: whatever the project's default privileges gave when
-- the table was created, take it all back, then grant only what the policies are written for.
--
-- Older Supabase projects (and a database built from Supabase's published SQL) carry
--   alter default privileges in schema public grant all on tables to anon, authenticated, ...
-- so a table created in public starts with all seven rights for `anon` and `authenticated`.
-- Row-level security filters SELECT, INSERT, UPDATE and DELETE, but not TRUNCATE, REFERENCES
-- or TRIGGER: with those defaults anyone holding the public anon key could truncate the
-- table through a role switch. Current projects grant nothing by default; the revoke is then
-- a no-op and the grants below are all there is.
--
-- Revoking table privileges revokes the column privileges too (PostgreSQL REVOKE docs), so
-- this also removes column grants a project added by hand. service_role (the project's own
-- server key, BYPASSRLS) is left as the project configured it.
revoke all on table public.users from public, anon, authenticated;

-- What 20261127000002 meant: a user reads their own row (policy "users can read their own
-- profile") and changes only their name, avatar and the time of the change (policy "users can
-- update their own profile"); never the id, created_at, a row of their own making, or a delete.
grant select on table public.users to authenticated;
grant update (full_name, avatar_url, updated_at) on table public.users to authenticated;
