-- The notes example's table on Postgres: one row per note, visible only to its owner.
-- Idempotent, and one simple-protocol message, so it applies as one transaction.
create table if not exists public.notes (
  id uuid primary key default gen_random_uuid(),
  -- Filled from the verified token when the insert leaves it out.
  owner uuid not null default auth.uid(),
  body text not null check (char_length(body) between 1 and 2000),
  created_at timestamptz not null default now()
);
create index if not exists notes_owner_created_at_idx on public.notes (owner, created_at desc);

-- Row-level security decides: a query without any owner filter still sees only the caller's rows.
alter table public.notes enable row level security;
drop policy if exists "owners read their notes" on public.notes;
create policy "owners read their notes" on public.notes
  for select to authenticated using (owner = (select auth.uid()));
drop policy if exists "owners add their notes" on public.notes;
create policy "owners add their notes" on public.notes
  for insert to authenticated with check (owner = (select auth.uid()));
drop policy if exists "owners delete their notes" on public.notes;
create policy "owners delete their notes" on public.notes
  for delete to authenticated using (owner = (select auth.uid()));

-- Supabase grants every new public table to anon and authenticated by default: take that back
-- and give the signed-in role exactly what the routes use (no update route, no update grant).
revoke all on public.notes from anon, authenticated;
grant select, insert, delete on public.notes to authenticated;
