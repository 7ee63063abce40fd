-- The caller's todos. Row-level security decides every row: owner = auth.uid().
create table public.todos (
  id uuid primary key default gen_random_uuid(),
  owner uuid not null default auth.uid(),
  title text not null check (char_length(title) between 1 and 500),
  done boolean not null default false,
  created_at timestamptz not null default now()
);
create index todos_owner_created_at on public.todos (owner, created_at desc);

alter table public.todos enable row level security;

create policy "owners read their todos" on public.todos
  for select to authenticated using (owner = (select auth.uid()));
create policy "owners add their todos" on public.todos
  for insert to authenticated with check (owner = (select auth.uid()));
create policy "owners update their todos" on public.todos
  for update to authenticated
  using (owner = (select auth.uid())) with check (owner = (select auth.uid()));
create policy "owners delete their todos" on public.todos
  for delete to authenticated using (owner = (select auth.uid()));

-- Exactly what the API needs: read, add (title only; owner defaults), tick done, delete.
revoke all on public.todos from anon, authenticated;
grant select, delete on public.todos to authenticated;
grant insert (title) on public.todos to authenticated;
grant update (done) on public.todos to authenticated;
