-- The profile table this service reads and writes, one row per auth user.
create table if not exists public.users (
  id uuid primary key references auth.users (id) on delete cascade,
  full_name text check (full_name is null or char_length(full_name) <= 200),
  avatar_url text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- Row-level security decides what each user sees: the service runs user queries as
-- `authenticated` with the verified claims, as Supabase's Data API does.
alter table public.users enable row level security;

drop policy if exists "users can read their own profile" on public.users;
create policy "users can read their own profile" on public.users
  for select to authenticated
  using ((select auth.uid()) = id);

drop policy if exists "users can update their own profile" on public.users;
create policy "users can update their own profile" on public.users
  for update to authenticated
  using ((select auth.uid()) = id)
  with check ((select auth.uid()) = id);

do $$
begin
  grant usage on schema public to authenticated;
exception when insufficient_privilege then
  null;
end
$$;
grant select on public.users to authenticated;
grant update (full_name, avatar_url, updated_at) on public.users to authenticated;

-- SESSION_CHECK=on asks whether the token's session still exists. `authenticated` cannot read
-- auth.sessions (nor should it), so a narrow SECURITY DEFINER function answers only that, for
-- the caller's own session, in a schema the Data API does not expose.
create schema if not exists jwt_service;
revoke all on schema jwt_service from public;
grant usage on schema jwt_service to authenticated;

-- Under RLS the user is auth.uid() and p_user is ignored, so a user can ask only about
-- their own sessions; with DB_RLS=off the service passes the verified `sub`.
create or replace function jwt_service.session_active(p_session uuid, p_user uuid)
  returns boolean
  language sql stable security definer
  set search_path = ''
  as $$
    select exists (
      select 1
      from auth.sessions s
      where s.id = p_session
        and s.user_id = coalesce((select auth.uid()), p_user)
        and (s.not_after is null or s.not_after > now())
    )
  $$;

revoke all on function jwt_service.session_active(uuid, uuid) from public;
grant execute on function jwt_service.session_active(uuid, uuid) to authenticated;
