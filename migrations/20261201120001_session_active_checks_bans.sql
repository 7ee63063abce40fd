-- SESSION_CHECK=on refuses a banned user at once, in the query that checks the session.
-- Supabase Auth bans a user by setting auth.users.banned_until; it leaves the user's sessions
-- in place (and their access tokens valid until `exp`), and refuses the user only at the next
-- refresh. This file redefines jwt_service.session_active with the same signature, so every
-- query that calls it (and the statements prepared on open connections) picks it up.

-- The bare-Postgres stand-in (20261127000001) had no banned_until. On Supabase the column
-- exists and auth.users belongs to supabase_auth_admin, which `postgres` may not alter: look
-- before altering, so that the real table is never touched.
do $$
begin
  if not exists (
    select 1
    from pg_attribute
    where attrelid = 'auth.users'::regclass
      and attname = 'banned_until'
      and not attisdropped
  ) then
    alter table auth.users add column banned_until timestamptz;
  end if;
end
$$;

-- Still STABLE (no writes), SECURITY DEFINER (authenticated may read neither auth.sessions nor
-- auth.users), and with an empty search_path so that every name is schema-qualified and no
-- object a caller creates can stand in for one of ours. Under RLS the user is auth.uid() and
-- p_user is ignored, so a user can ask only about their own sessions.
-- A ban ends at banned_until, as in Supabase Auth (User.IsBanned: now before banned_until).
create or replace function jwt_service.session_active(p_session uuid, p_user uuid)
  returns boolean
  language sql stable security definer
  set search_path = ''
  as $$
    select exists (
      select 1
      from auth.sessions s
      join auth.users u on u.id = s.user_id
      where s.id = p_session
        and s.user_id = coalesce((select auth.uid()), p_user)
        and (s.not_after is null or s.not_after > now())
        and (u.banned_until is null or u.banned_until <= now())
    )
  $$;

-- `create or replace` keeps the function's privileges; stated again so this file says them.
revoke all on function jwt_service.session_active(uuid, uuid) from public;
grant execute on function jwt_service.session_active(uuid, uuid) to authenticated;
