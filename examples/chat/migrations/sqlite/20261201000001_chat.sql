-- The chat example's tables on the embedded store: the same shape as the Postgres migration,
-- without row-level security (every query filters by the verified user id instead) and with
-- the quota tables prefixed rather than in a private schema.

create table if not exists conversations (
  id text primary key,
  owner text not null,
  title text not null,
  created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index if not exists conversations_owner_updated_idx on conversations (owner, updated_at desc);

create table if not exists chat_messages (
  id integer primary key autoincrement,
  conversation_id text not null references conversations (id) on delete cascade,
  owner text not null,
  role text not null check (role in ('user', 'assistant')),
  content text not null,
  incomplete integer not null default 0,
  created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index if not exists chat_messages_conversation_idx on chat_messages (conversation_id, id);

create table if not exists chat_request_windows (
  user_id text not null,
  window_start integer not null,
  requests integer not null,
  primary key (user_id, window_start)
);

create table if not exists chat_token_days (
  user_id text not null,
  day text not null,
  tokens integer not null default 0,
  primary key (user_id, day)
);
