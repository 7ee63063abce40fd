# Sourced by scripts/test, scripts/loadtest and scripts/soak: installs and starts a throwaway
# PostgreSQL and a PgBouncer in transaction mode on loopback, and stops them on exit.
# After `services_start`: PG_PORT, BOUNCER_PORT, PG_BIN, SVC_WORK, TEST_DATABASE_URL,
# TEST_PGBOUNCER_URL, TEST_PGBOUNCER_BIN, TEST_PG_BIN_DIR, TEST_PG_RUN_AS are set. `services_stop` is idempotent.

svc_log() { printf '\n== [%ss] %s\n' "$SECONDS" "$*" >&2; }

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Installs Debian packages that are missing (each argument: "command-or-path:package").
ensure_packages() {
  local want=() item probe pkg
  for item in "$@"; do
    probe=${item%%:*}
    pkg=${item#*:}
    if [[ $probe == /* ]]; then compgen -G "$probe" >/dev/null && continue; else command -v "$probe" >/dev/null && continue; fi
    want+=("$pkg")
  done
  if ((${#want[@]})); then
    svc_log "installing ${want[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${want[@]}" >/dev/null
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# services_start [pool_size] [max_connections]
services_start() {
  local pool_size=${1:-8} max_conn=${2:-400}
  ensure_packages "/usr/lib/postgresql/*/bin/initdb:postgresql" "psql:postgresql-client" \
    "/usr/sbin/pgbouncer:pgbouncer" "python3:python3"
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  local pgbouncer_bin=/usr/sbin/pgbouncer
  command -v pgbouncer >/dev/null && pgbouncer_bin=$(command -v pgbouncer)

  # Postgres and PgBouncer refuse to run as root: run them as an unprivileged user.
  SVC_RUN_AS=()
  local svc_user
  svc_user=$(id -un)
  if [[ $(id -u) -eq 0 ]]; then
    svc_user=postgres
    id "$svc_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$svc_user"
    SVC_RUN_AS=(runuser -u "$svc_user" --)
  fi

  SVC_WORK=$(mktemp -d /tmp/sjs-services.XXXXXX)
  chmod 755 "$SVC_WORK"
  [[ ${#SVC_RUN_AS[@]} -eq 0 ]] || chown "$svc_user" "$SVC_WORK"
  PG_PORT=$(free_port)
  BOUNCER_PORT=$(free_port)
  trap services_stop EXIT

  svc_log "starting Postgres ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PG_PORT"
  "${SVC_RUN_AS[@]}" "$PG_BIN/initdb" -D "$SVC_WORK/pg" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
  # Speed over durability: this cluster is thrown away.
  "${SVC_RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$SVC_WORK/pg" -l "$SVC_WORK/pg.log" -w -t 60 \
    -o "-p $PG_PORT -k $SVC_WORK -c listen_addresses=127.0.0.1 -c max_connections=$max_conn -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null

  svc_log "starting PgBouncer (transaction mode, pool $pool_size) on 127.0.0.1:$BOUNCER_PORT"
  cat >"$SVC_WORK/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $SVC_WORK/userlist.txt
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits,options
logfile = $SVC_WORK/pgbouncer.log
pidfile = $SVC_WORK/pgbouncer.pid
INI
  echo '"postgres" ""' >"$SVC_WORK/userlist.txt"
  [[ ${#SVC_RUN_AS[@]} -eq 0 ]] || chown "$svc_user" "$SVC_WORK"/pgbouncer.ini "$SVC_WORK"/userlist.txt
  "${SVC_RUN_AS[@]}" "$pgbouncer_bin" -d "$SVC_WORK/pgbouncer.ini"
  local _
  for _ in $(seq 1 50); do
    psql -qAt "postgres://postgres@127.0.0.1:$BOUNCER_PORT/postgres" -c 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
  done

  export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  export TEST_PGBOUNCER_URL="postgres://postgres@127.0.0.1:$BOUNCER_PORT/postgres"
  # For tests that need a private cluster to stop or freeze (outage tests).
  export TEST_PG_BIN_DIR="$PG_BIN"
  export TEST_PG_RUN_AS="${SVC_RUN_AS[*]}"
  # For tests that start a PgBouncer of their own (one left at its default settings).
  export TEST_PGBOUNCER_BIN="$pgbouncer_bin"
}

# The postmaster's pid (for CPU accounting).
postgres_pid() { head -n 1 "$SVC_WORK/pg/postmaster.pid"; }

services_stop() {
  set +e
  [[ -n "${SVC_WORK:-}" ]] || return 0
  [[ -f "$SVC_WORK/pgbouncer.pid" ]] && kill "$(cat "$SVC_WORK/pgbouncer.pid")" 2>/dev/null
  [[ -d "$SVC_WORK/pg" ]] && "${SVC_RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$SVC_WORK/pg" -m immediate stop >/dev/null 2>&1
  rm -rf "$SVC_WORK"
  SVC_WORK=
}
