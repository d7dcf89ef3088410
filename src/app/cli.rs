//! The commands that work next to the database: `migrate`, `dead-letters`, `customers`.

use sqlx::PgPool;
use tracing::info;

use crate::config::{CustomerCommand, DatabaseArgs, DeadLetterCommand};
use crate::domain::SyncState;
use crate::http;
use crate::store;

/// `paysync dead-letters list|replay`.
pub async fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List {
            database,
            all,
            limit,
        } => {
            let pool = connect_to_schema(&database).await?;
            let mut conn = store::acquire(&pool).await?;
            for letter in store::dead_letters::list(&mut conn, all, limit).await? {
                println!(
                    "{}",
                    serde_json::to_string(&http::DeadLetterBody::from(letter))?
                );
            }
            Ok(())
        }
        DeadLetterCommand::Replay {
            database,
            ids,
            all_open,
        } => {
            let pool = connect_to_schema(&database).await?;
            let ids = if all_open {
                let mut conn = store::acquire(&pool).await?;
                store::dead_letters::list(&mut conn, false, i64::MAX)
                    .await?
                    .into_iter()
                    .map(|letter| letter.id)
                    .collect()
            } else {
                ids
            };
            for id in ids {
                crate::sync::dead_letters::replay(&pool, id).await?;
                info!(dead_letter = %id, "replay queued");
            }
            Ok(())
        }
    }
}

/// `paysync customers list`.
pub async fn customers(command: CustomerCommand) -> anyhow::Result<()> {
    let CustomerCommand::List {
        database,
        sync_state,
        account,
        limit,
    } = command;
    let pool = connect_to_schema(&database).await?;
    let sync_state = sync_state
        .as_deref()
        .map(SyncState::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut conn = store::acquire(&pool).await?;
    let mut after = None;
    let mut printed = 0;
    while printed < limit {
        let filter = store::customers::ListFilter {
            account: account.as_deref(),
            after,
            email: None,
            sync_state,
        };
        let page_size = (limit - printed).min(CLI_PAGE);
        let page = store::customers::list_live(&mut conn, filter, page_size).await?;
        let Some(last) = page.last().map(|customer| customer.id) else {
            break;
        };
        printed += page.len() as i64;
        for customer in page {
            println!(
                "{}",
                serde_json::to_string(&http::CustomerBody::from(customer))?
            );
        }
        after = Some(last);
    }
    Ok(())
}

/// Rows the customer listing reads at a time.
const CLI_PAGE: i64 = 500;

/// Connects for a command that reads paysync's tables, and says plainly when the database has
/// none (never migrated, or not paysync's database) instead of a bare SQL error.
async fn connect_to_schema(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let pool = connect(args).await?;
    let mut conn = store::acquire(&pool).await?;
    if !store::has_schema(&mut conn).await? {
        anyhow::bail!(
            "the database {} has no paysync tables: run `paysync migrate` first, or set \
             DATABASE_URL to the database paysync serves from (scripts/run uses \
             postgres://postgres:postgres@127.0.0.1:5432/paysync)",
            store::describe_url(&args.database_url)
        );
    }
    Ok(pool)
}

/// `paysync migrate`.
pub async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let pool = connect(&args).await?;
    store::migrate(&pool, &args.mirror_schema).await?;
    info!("database schema is up to date");
    pool.close().await;
    Ok(())
}

pub(super) async fn connect(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let pool = store::connect(&args.database_url, args.database_max_connections).await?;
    info!(database = %store::describe_url(&args.database_url), "connected to PostgreSQL");
    Ok(pool)
}
