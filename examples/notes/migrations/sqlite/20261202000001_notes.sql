-- The notes example's table on the embedded store. SQLite has no row-level security: every
-- query of the example filters by owner itself.
create table if not exists notes (
  id text primary key,
  owner text not null,
  body text not null check (length(body) between 1 and 2000),
  created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index if not exists notes_owner_created_at_idx on notes (owner, created_at);
