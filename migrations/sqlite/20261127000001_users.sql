-- The embedded store's profile table, shaped like the Postgres one (ids as canonical UUID text).
create table if not exists users (
  id text primary key not null,
  full_name text check (full_name is null or length(full_name) <= 200),
  avatar_url text,
  created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The demo profile that the start-up log's curl command asks for.
insert or ignore into users (id, full_name) values ('5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f', 'Demo User');
