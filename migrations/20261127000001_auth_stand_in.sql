-- A minimal stand-in for Supabase's `auth` schema, created only where each piece is missing.
-- On a Supabase database every check below finds the real object and leaves it alone; on a bare
-- Postgres (local development, CI, self-hosting) it provides just what this service relies on.

-- Roles are cluster-wide while migrations run per database: two databases migrating at once
-- (parallel tests) can both see a role as missing, so losing that race is not an error.
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        execute format('create role %I nologin noinherit', r);
      exception when duplicate_object or unique_violation then
        null;
      end;
    end if;
  end loop;
  -- The connecting user switches to `authenticated` per request (SET LOCAL ROLE), which needs
  -- membership unless it is a superuser. Supabase's `postgres` already has it.
  if not exists (
    select 1 from pg_roles where rolname = current_user and rolsuper
  ) and not pg_has_role(current_user, 'authenticated', 'member') then
    begin
      execute format('grant anon, authenticated, service_role to %I', current_user);
    exception when insufficient_privilege then
      raise warning 'could not grant authenticated to %: DB_RLS=on will refuse to start', current_user;
    end;
  end if;
end
$$;

create schema if not exists auth;

do $$
begin
  if to_regclass('auth.users') is null then
    create table auth.users (
      id uuid primary key,
      email text unique,
      phone text,
      raw_user_meta_data jsonb not null default '{}'::jsonb,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now()
    );
  end if;

  if to_regclass('auth.sessions') is null then
    create table auth.sessions (
      id uuid primary key,
      user_id uuid not null references auth.users (id) on delete cascade,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      not_after timestamptz
    );
    create index sessions_user_id_idx on auth.sessions (user_id);
  end if;

  -- Supabase's semantics: the claims PostgREST (and this service) set per transaction.
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
  end if;

  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
  end if;

  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
  end if;
end
$$;

-- Policies call auth.uid(): the API roles need to reach the schema. Supabase grants this
-- already and its `postgres` may not re-grant it, so a refusal there is fine.
do $$
begin
  grant usage on schema auth to anon, authenticated, service_role;
exception when insufficient_privilege then
  null;
end
$$;
