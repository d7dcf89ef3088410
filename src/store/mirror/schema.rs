//! The mirror schema's name and its migrations (`migrations_mirror/`), which run with only
//! that schema on the search path, so one set of files serves any schema name.

use anyhow::Context as _;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};

use crate::domain::MirrorSchema;

/// Creates the schema and applies its pending migrations, on a connection of its own (its
/// search path is changed). Tables an engine with the same layout already made are taken over
/// in place: paysync's columns are added to them.
pub async fn migrate(pool: &PgPool, schema: &MirrorSchema) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("./migrations_mirror");
    migrator.create_schema(schema.as_str().to_owned());
    migrator.dangerous_set_table_name(format!("{schema}._paysync_migrations"));
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("connecting to apply the mirror's migrations")?;
    conn.execute(AssertSqlSafe(format!(
        "create schema if not exists {schema}"
    )))
    .await
    .context("creating the mirror schema")?;
    conn.execute(AssertSqlSafe(format!("set search_path to {schema}")))
        .await
        .context("choosing the mirror schema")?;
    migrator
        .run(&mut conn)
        .await
        .with_context(|| format!("applying the mirror's migrations in schema {schema}"))?;
    conn.close().await.ok();
    Ok(())
}
