-- The chat example's tables. Conversations and messages live in `public` under row-level
-- security (each user sees and writes only their own, also through Supabase's Data API); the
-- quota counters live in the private `chat_private` schema, which the Data API does not expose
-- and `authenticated` cannot touch except through the two functions below.

create table if not exists public.conversations (
  id uuid primary key,
  owner uuid not null default auth.uid() references auth.users (id) on delete cascade,
  title text not null check (char_length(title) <= 200),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists conversations_owner_updated_idx
  on public.conversations (owner, updated_at desc);

create table if not exists public.chat_messages (
  id bigint generated always as identity primary key,
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  owner uuid not null default auth.uid() references auth.users (id) on delete cascade,
  role text not null check (role in ('user', 'assistant')),
  content text not null,
  -- The client went away (or the upstream failed) before the answer was finished.
  incomplete boolean not null default false,
  created_at timestamptz not null default now()
);
create index if not exists chat_messages_conversation_idx
  on public.chat_messages (conversation_id, id);

alter table public.conversations enable row level security;
alter table public.chat_messages enable row level security;

drop policy if exists "own conversations: read" on public.conversations;
create policy "own conversations: read" on public.conversations
  for select to authenticated using ((select auth.uid()) = owner);
drop policy if exists "own conversations: create" on public.conversations;
create policy "own conversations: create" on public.conversations
  for insert to authenticated with check ((select auth.uid()) = owner);
drop policy if exists "own conversations: touch" on public.conversations;
create policy "own conversations: touch" on public.conversations
  for update to authenticated
  using ((select auth.uid()) = owner) with check ((select auth.uid()) = owner);
drop policy if exists "own conversations: delete" on public.conversations;
create policy "own conversations: delete" on public.conversations
  for delete to authenticated using ((select auth.uid()) = owner);

drop policy if exists "own messages: read" on public.chat_messages;
create policy "own messages: read" on public.chat_messages
  for select to authenticated using ((select auth.uid()) = owner);
-- A message may only join a conversation the writer owns (the subquery runs under the
-- conversations' own policy, so another user's conversation is invisible to it).
drop policy if exists "own messages: add" on public.chat_messages;
create policy "own messages: add" on public.chat_messages
  for insert to authenticated with check (
    (select auth.uid()) = owner
    and exists (select 1 from public.conversations c where c.id = conversation_id)
  );

grant select, insert, delete on public.conversations to authenticated;
grant update (title, updated_at) on public.conversations to authenticated;
grant select, insert (conversation_id, owner, role, content, incomplete) on public.chat_messages
  to authenticated;

-- Quota counters: one row per user and window. No grant on the tables at all, so neither the
-- Data API nor a user's own SQL can reset a counter; the SECURITY DEFINER functions below are
-- the only way in, they act on auth.uid() alone, and they can only add.
create schema if not exists chat_private;
revoke all on schema chat_private from public;
grant usage on schema chat_private to authenticated;

create table if not exists chat_private.request_windows (
  user_id uuid not null,
  window_start timestamptz not null,
  requests integer not null,
  primary key (user_id, window_start)
);
create table if not exists chat_private.token_days (
  user_id uuid not null,
  day date not null,
  tokens bigint not null default 0,
  primary key (user_id, day)
);
alter table chat_private.request_windows enable row level security;
alter table chat_private.token_days enable row level security;
revoke all on chat_private.request_windows, chat_private.token_days from public;

-- Admission, in one statement: 0 when the caller may send one more request now (and it is
-- counted), else the seconds until they may. Concurrent calls for one user serialize on the
-- window's row (ON CONFLICT DO UPDATE locks it and re-checks `requests` on the latest version),
-- so N racing requests against a limit of L admit exactly min(N, L), on any number of machines.
create or replace function chat_private.admit(p_requests_per_minute integer, p_tokens_per_day bigint)
  returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_user uuid := auth.uid();
  v_now timestamptz := clock_timestamp();
  v_minute timestamptz := date_trunc('minute', v_now);
  v_day date := (v_now at time zone 'utc')::date;
  v_requests integer;
begin
  if v_user is null then
    raise exception 'chat_private.admit needs a signed-in user' using errcode = '42501';
  end if;
  if p_requests_per_minute < 1 then
    return 60;
  end if;
  if exists (
    select 1 from chat_private.token_days
    where user_id = v_user and day = v_day and tokens >= p_tokens_per_day
  ) then
    return greatest(1, ceil(extract(epoch from ((v_day + 1)::timestamp at time zone 'utc') - v_now)))::integer;
  end if;
  insert into chat_private.request_windows as w (user_id, window_start, requests)
    values (v_user, v_minute, 1)
    on conflict (user_id, window_start)
    do update set requests = w.requests + 1 where w.requests < p_requests_per_minute
    returning w.requests into v_requests;
  if v_requests is null then
    return greatest(1, ceil(extract(epoch from (v_minute + interval '1 minute') - v_now)))::integer;
  end if;
  -- Old windows are the caller's own and tiny; dropping them here keeps the table bounded
  -- without a scheduled job.
  delete from chat_private.request_windows
    where user_id = v_user and window_start < v_minute - interval '1 hour';
  return 0;
end
$$;

-- Adds a finished turn's completion tokens to the caller's day. Negative counts are ignored,
-- so it cannot be used to give budget back.
create or replace function chat_private.add_tokens(p_tokens bigint)
  returns void
  language sql volatile security definer
  set search_path = ''
as $$
  insert into chat_private.token_days as d (user_id, day, tokens)
    select auth.uid(), (clock_timestamp() at time zone 'utc')::date, greatest(p_tokens, 0)
    where auth.uid() is not null
  on conflict (user_id, day) do update set tokens = d.tokens + excluded.tokens;
$$;

revoke all on function chat_private.admit(integer, bigint) from public;
revoke all on function chat_private.add_tokens(bigint) from public;
grant execute on function chat_private.admit(integer, bigint) to authenticated;
grant execute on function chat_private.add_tokens(bigint) to authenticated;
