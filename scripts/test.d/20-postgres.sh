# shellcheck shell=bash
# Starts a throwaway PostgreSQL on loopback for the tests that need one, and exports
# PVID_TEST_PG_URL (tests create their own database in it: `CREATE DATABASE t_<random>`).
# Sourced by scripts/test; stops the server by PID on exit. Reuses PVID_TEST_PG_URL if it is
# already set (a developer's own server).
if [ -z "${PVID_TEST_PG_URL:-}" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
  _pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  _pg_port=${PVID_TEST_PG_PORT:-$((20000 + RANDOM % 20000))}
  _pg_data="$PVID_CI_TMP/pgdata"
  mkdir -p "$_pg_data"; chown postgres:postgres "$_pg_data"; chmod 700 "$_pg_data"
  runuser -u postgres -- "$_pg_bin/initdb" -D "$_pg_data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
  # max_connections: every test database gets a pool per replica; the suites run in parallel.
  runuser -u postgres -- "$_pg_bin/pg_ctl" -D "$_pg_data" -l "$_pg_data/server.log" -w -t 30 \
    -o "-p $_pg_port -k $_pg_data -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
  for _ in $(seq 1 100); do "$_pg_bin/pg_isready" -q -h 127.0.0.1 -p "$_pg_port" && break; sleep 0.1; done
  "$_pg_bin/pg_isready" -q -h 127.0.0.1 -p "$_pg_port" || { cat "$_pg_data/server.log"; exit 1; }
  _pg_pid=$(head -1 "$_pg_data/postmaster.pid")
  on_exit "runuser -u postgres -- '$_pg_bin/pg_ctl' -D '$_pg_data' -m fast -w stop >/dev/null 2>&1 || kill $_pg_pid"
  export PVID_TEST_PG_URL="postgres://postgres@127.0.0.1:$_pg_port/postgres"
  echo "postgres $("$_pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$_pg_port (pid $_pg_pid)"
fi
