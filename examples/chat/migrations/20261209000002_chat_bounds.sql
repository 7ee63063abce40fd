-- Bounds on what one user can make the chat cost and store (issue 17, item 5).

-- A stored message is at most 32,000 characters (about 8,000 tokens), for rows inserted
-- through Supabase's Data API too, which 20261201000001's insert policy lets users write.
-- The example itself stores at most 4,000 characters of a user's message and cuts a longer
-- answer there (marking it incomplete). NOT VALID: rows written before this bound existed are
-- not checked (a full scan under an exclusive lock, and no good way to shorten someone's data
-- for them); the example reads at most the first 32,000 characters of any row, so they cost
-- no more than new ones. Once they are dealt with, `alter table public.chat_messages validate
-- constraint chat_messages_content_length` makes the bound hold for every row.
alter table public.chat_messages drop constraint if exists chat_messages_content_length;
alter table public.chat_messages add constraint chat_messages_content_length
  check (char_length(content) <= 32000) not valid;

-- The day's tokens are charged in their own steps, whatever becomes of the history:
-- admission reserves what the answer may cost (the output cap plus the prompt's estimate)
-- before the model is called, and the app settles to the real usage once the answer ended.
-- An answer whose settling never happens (the database was down then) stays charged its
-- reservation: the error is on the side of charging.
--
-- Admission, in one call: 0 and the day charged when the caller may send one more request now
-- (it is counted and its reservation added), else the seconds until they may. Concurrent calls
-- for one user queue on the day's row, locked first, so each sees the reservations of those
-- admitted before it: the day overshoots its limit by at most one reservation, on any number
-- of machines. The lock order (day, then minute) is the same in every call.
create or replace function chat_private.admit_and_reserve(
  p_requests_per_minute integer,
  p_tokens_per_day bigint,
  p_reserve bigint
)
  returns table (wait_seconds integer, reserved_day date)
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_user uuid := auth.uid();
  v_now timestamptz := clock_timestamp();
  v_minute timestamptz := date_trunc('minute', v_now);
  v_day date := (v_now at time zone 'utc')::date;
  v_tokens bigint;
  v_requests integer;
begin
  if v_user is null then
    raise exception 'chat_private.admit_and_reserve needs a signed-in user' using errcode = '42501';
  end if;
  reserved_day := v_day;
  if p_requests_per_minute < 1 then
    wait_seconds := 60;
    return next;
    return;
  end if;
  insert into chat_private.token_days (user_id, day, tokens) values (v_user, v_day, 0)
    on conflict (user_id, day) do nothing;
  select d.tokens into v_tokens from chat_private.token_days d
    where d.user_id = v_user and d.day = v_day
    for update;
  if v_tokens >= p_tokens_per_day then
    wait_seconds := greatest(1, ceil(extract(epoch from ((v_day + 1)::timestamp at time zone 'utc') - v_now)))::integer;
    return next;
    return;
  end if;
  insert into chat_private.request_windows as w (user_id, window_start, requests)
    values (v_user, v_minute, 1)
    on conflict (user_id, window_start)
    do update set requests = w.requests + 1 where w.requests < p_requests_per_minute
    returning w.requests into v_requests;
  if v_requests is null then
    wait_seconds := greatest(1, ceil(extract(epoch from (v_minute + interval '1 minute') - v_now)))::integer;
    return next;
    return;
  end if;
  update chat_private.token_days d set tokens = d.tokens + greatest(p_reserve, 0)
    where d.user_id = v_user and d.day = v_day;
  delete from chat_private.request_windows
    where user_id = v_user and window_start < v_minute - interval '1 hour';
  wait_seconds := 0;
  return next;
  return;
end
$$;

-- Settling: the reservation comes off, the real usage goes on. Not for `authenticated` (a
-- user who could call it could settle every answer at zero): the app calls it as the database
-- user it connects with, outside any user's transaction, so it also runs after the user
-- signed out mid-answer (SESSION_CHECK=on refuses them a transaction then). That user owns
-- this function when it also ran the migrations (Supabase's `postgres`); an app connecting
-- as another role needs `grant execute on function chat_private.settle(uuid, date, bigint,
-- bigint) to <role>`.
create or replace function chat_private.settle(
  p_user uuid,
  p_day date,
  p_reserved bigint,
  p_used bigint
)
  returns void
  language sql volatile security definer
  set search_path = ''
as $$
  update chat_private.token_days
     set tokens = greatest(tokens - greatest(p_reserved, 0), 0) + greatest(p_used, 0)
   where user_id = p_user and day = p_day;
$$;

-- A new function is executable by PUBLIC, and by whomever default privileges name: revoke
-- from all of them, then grant admission alone.
revoke all on function chat_private.admit_and_reserve(integer, bigint, bigint)
  from public, anon, authenticated;
revoke all on function chat_private.settle(uuid, date, bigint, bigint)
  from public, anon, authenticated;
grant execute on function chat_private.admit_and_reserve(integer, bigint, bigint) to authenticated;
-- chat_private.admit and chat_private.add_tokens, which the previous release calls, stay
-- granted (20261209000001): they only ever add to a count, and instances still running that
-- release during a rolling deploy call them until they are replaced. A later migration may
-- drop them.
