//! The start-up check of `DB_RLS=on`: may the database user become each of `JWT_ALLOWED_ROLES`?

use sqlx::{AssertSqlSafe, Row};

use super::PgDb;
use crate::db::caller::quote_literal;
use crate::db::error::{DbError, bounded};

impl PgDb {
    /// With `DB_RLS=on` each caller's transaction switches to the token's role, one of
    /// `JWT_ALLOWED_ROLES`. Checks each listed role once: it exists, the database user may
    /// switch to it, and it does not bypass row-level security (a superuser or `BYPASSRLS` role
    /// would make every policy moot). `Ok(Some(problem))` names the first role that fails.
    pub(crate) async fn role_switch_problem(
        &self,
        roles: &[String],
    ) -> Result<Option<String>, DbError> {
        // The simple protocol (no bind parameters) is what works through a transaction pooler,
        // so the names travel as literals.
        let list = roles
            .iter()
            .map(|r| format!("({})", quote_literal(r)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "select r.name, \
               exists (select 1 from pg_roles where rolname = r.name) as found, \
               coalesce((select rolsuper from pg_roles where rolname = current_user), false) \
                 or coalesce((select pg_has_role(current_user, p.oid, 'member') \
                              from pg_roles p where p.rolname = r.name), false) as may_switch, \
               coalesce((select rolsuper or rolbypassrls from pg_roles where rolname = r.name), \
                        false) as bypasses_rls \
             from (values {list}) as r(name)"
        );
        let rows = bounded(self.rules.timeout, async {
            let mut lease = self.acquire().await?;
            let rows = sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_all(&mut *lease)
                .await
                .map_err(DbError::unavailable)?;
            lease.release();
            Ok(rows)
        })
        .await?;
        for row in rows {
            let get = |column: &str| row.try_get::<bool, _>(column).map_err(DbError::unavailable);
            let name: String = row.try_get("name").map_err(DbError::unavailable)?;
            let problem = if !get("found")? {
                format!(
                    "role `{name}` (JWT_ALLOWED_ROLES) does not exist in the database; create it (`migrate` creates `authenticated`), remove it from JWT_ALLOWED_ROLES, or set DB_RLS=off"
                )
            } else if !get("may_switch")? {
                format!(
                    "the database user may not switch to role `{name}` (JWT_ALLOWED_ROLES); run `grant {name} to <user>` (`migrate` does it for `authenticated`), remove it from JWT_ALLOWED_ROLES, or set DB_RLS=off"
                )
            } else if get("bypasses_rls")? {
                format!(
                    "role `{name}` (JWT_ALLOWED_ROLES) is a superuser or has BYPASSRLS, so row-level security would not apply to its requests; remove it from JWT_ALLOWED_ROLES"
                )
            } else {
                continue;
            };
            return Ok(Some(problem));
        }
        Ok(None)
    }
}
