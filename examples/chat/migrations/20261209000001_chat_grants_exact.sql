-- The privileges on the chat's tables, exactly (issue 17, item 5), as 20261201120002 does for
-- public.users. 20261201000001 granted without revoking first, and it stays byte for byte as
-- deployed databases applied it (sqlx refuses to start when an applied migration's checksum
-- changes), so the revokes come here.

-- Older Supabase projects (and databases built from Supabase's published SQL) carry `alter
-- default privileges in schema public grant all on tables, sequences, functions to anon,
-- authenticated, ...`, so the tables 20261201000001 created started with all seven table
-- rights for `anon` and `authenticated`. Row-level security
-- filters SELECT, INSERT, UPDATE and DELETE but not TRUNCATE, REFERENCES or TRIGGER, and
-- UPDATE on the message id's sequence lets anyone `setval` it back, after which every insert
-- fails on the primary key. Take everything back, then grant only what the policies are
-- written for. Revoking table rights revokes column rights too. service_role (BYPASSRLS, the
-- project's own server key) keeps what the project gave it.
revoke all on table public.conversations, public.chat_messages from public, anon, authenticated;
grant select, insert, delete on table public.conversations to authenticated;
grant update (title, updated_at) on table public.conversations to authenticated;
grant select on table public.chat_messages to authenticated;
grant insert (conversation_id, owner, role, content, incomplete) on table public.chat_messages
  to authenticated;

-- An identity column's inserts take its next value without any right on the sequence.
do $$
begin
  execute format(
    'revoke all on sequence %s from public, anon, authenticated',
    pg_get_serial_sequence('public.chat_messages', 'id')
  );
end
$$;

-- The private schema: a default that reaches every schema (`alter default privileges grant
-- all on tables to ...` without `in schema`) would have opened the quota tables as well.
revoke all on schema chat_private from public, anon, authenticated;
grant usage on schema chat_private to authenticated;
revoke all on all tables in schema chat_private from public, anon, authenticated;
revoke all on all sequences in schema chat_private from public, anon, authenticated;
revoke all on all functions in schema chat_private from public, anon, authenticated;

-- Admission and the day's tokens: the functions 20261201000001 made, for `authenticated`
-- only. They act on auth.uid() alone and can only add.
grant execute on function chat_private.admit(integer, bigint) to authenticated;
grant execute on function chat_private.add_tokens(bigint) to authenticated;
