//! Least privilege in PostgreSQL (docs/adr/0008), on a database provisioned with exactly the
//! statements of `platform::db::roles`: the migration role migrates (`transaction-api migrate`),
//! each service serves as a role that does its DML and nothing else, and neither service's roles
//! reach the other's schema or the `public` schema.

use std::time::{Duration, Instant};

use platform::config::{Sources, load};
use platform::db::roles::SchemaRoles;
use platform::testkit::{TestServer, fresh_database, provision_roles, url_as};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::helpers::{Options, SIGNING_KEY, binary, brl, notifications, spawn_app_with};

/// A fresh database with both services' roles, schemas and grants, as an administrator creates them.
struct Provisioned {
    /// The superuser's URL of the database.
    url: String,
    transactions: SchemaRoles,
    notifications: SchemaRoles,
}

async fn provisioned() -> Provisioned {
    let url = fresh_database().await;
    // Roles belong to the whole test server: each test gets its own.
    let prefix = platform::ids::new_id("r");
    let transactions = SchemaRoles::with_prefix(transaction_api::SCHEMA, &format!("{prefix}_transactions"));
    let notifications = SchemaRoles::with_prefix(notification_service::SCHEMA, &format!("{prefix}_notifications"));
    provision_roles(&url, &[&transactions, &notifications]).await;
    Provisioned { url, transactions, notifications }
}

impl Provisioned {
    async fn connect_as(&self, role: &str) -> PgConnection {
        PgConnection::connect(&url_as(&self.url, role)).await.unwrap_or_else(|e| panic!("log in as {role}: {e}"))
    }

    /// Both schemas migrated by their migration roles: transaction-api's through its binary's
    /// `migrate` command as the migration Job runs it (no credential but the migration role's, no
    /// listener certificate), notification-service's through the same platform function.
    async fn migrate_both(&self) {
        let output = binary(&url_as(&self.url, &self.transactions.migrator), 0)
            .env_remove("QUILLA_WEBHOOK__SIGNING_KEY")
            .env_remove("QUILLA_REDIS__URL")
            .env("QUILLA_SERVER__TLS__CERT_PATH", "/not/mounted/tls.crt")
            .env("QUILLA_SERVER__TLS__KEY_PATH", "/not/mounted/tls.key")
            .arg("migrate")
            .output()
            .expect("runs");
        assert!(output.status.success(), "transaction-api migrate as the migration role: {output:?}");
        let overrides = format!(
            "[webhook]\nsigning_key = \"{SIGNING_KEY}\"\n[database]\nurl = \"{}\"\nssl_mode = \"disable\"\n{}",
            url_as(&self.url, &self.notifications.migrator),
            crate::helpers::ISSUER.auth_toml()
        );
        let config: notification_service::Config =
            load(&Sources::overridden(notification_service::DEFAULTS, overrides)).expect("config");
        platform::db::run_migrations(&config.database, notification_service::SCHEMA, &notification_service::MIGRATOR)
            .await
            .expect("notification-service migrations as its migration role");
    }
}

/// Runs `statement` and returns its SQLSTATE when it fails.
async fn sqlstate(connection: &mut PgConnection, statement: &str) -> Option<String> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(connection).await {
        Ok(_) => None,
        Err(error) => Some(
            error.as_database_error().and_then(|e| e.code()).map(String::from).unwrap_or_else(|| error.to_string()),
        ),
    }
}

/// `statement` is refused for lack of privilege (SQLSTATE 42501).
async fn assert_denied(connection: &mut PgConnection, role: &str, statement: &str) {
    assert_eq!(sqlstate(connection, statement).await.as_deref(), Some("42501"), "{role} must not run: {statement}");
}

async fn assert_allowed(connection: &mut PgConnection, role: &str, statement: &str) {
    assert_eq!(sqlstate(connection, statement).await, None, "{role} must be able to run: {statement}");
}

#[tokio::test]
async fn the_migration_role_migrates_as_the_owner_and_the_serving_role_cannot() {
    let db = provisioned().await;
    let serving = binary(&url_as(&db.url, &db.transactions.app), 0).arg("migrate").output().expect("runs");
    assert!(!serving.status.success(), "the serving role cannot migrate");
    assert!(String::from_utf8_lossy(&serving.stderr).contains("permission denied"), "{serving:?}");

    db.migrate_both().await;
    db.migrate_both().await; // a second run finds nothing to do

    let mut admin = PgConnection::connect(&db.url).await.expect("superuser");
    for roles in [&db.transactions, &db.notifications] {
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
        )
        .bind(&roles.schema)
        .fetch_all(&mut admin)
        .await
        .expect("owners");
        assert_eq!(owners, [roles.owner.as_str()], "everything in `{}` belongs to its owner role", roles.schema);
    }
    let owner_login = PgConnection::connect(&url_as(&db.url, &db.transactions.owner)).await;
    assert!(owner_login.is_err(), "the owner role cannot log in");
}

#[tokio::test]
async fn a_serving_role_does_dml_on_its_own_tables_and_nothing_else() {
    let db = provisioned().await;
    db.migrate_both().await;
    let mut admin = PgConnection::connect(&db.url).await.expect("superuser");
    sqlx::raw_sql("CREATE TABLE public.shared (id int); INSERT INTO public.shared VALUES (1)")
        .execute(&mut admin)
        .await
        .expect("a table in the public schema");

    for (own, other) in [(&db.transactions, &db.notifications), (&db.notifications, &db.transactions)] {
        for login in [own.app.clone(), format!("{}{}", own.app, platform::db::roles::CLONE_SUFFIX)] {
            let mut connection = db.connect_as(&login).await;
            let (schema, foreign) = (&own.schema, &other.schema);
            let table = if schema == "transactions" { "transactions.outbox" } else { "notifications.notifications" };
            let foreign_table =
                if foreign == "transactions" { "transactions.outbox" } else { "notifications.notifications" };
            assert_allowed(&mut connection, &login, &format!("SELECT count(*) FROM {table}")).await;
            for statement in [
                format!("CREATE TABLE {schema}.extra (id int)"),
                format!("CREATE VIEW {schema}.extra AS SELECT 1"),
                format!("ALTER TABLE {table} ADD COLUMN extra int"),
                format!("CREATE INDEX extra ON {table} (created_at)"),
                format!("DROP TABLE {table}"),
                format!("TRUNCATE {table}"),
                format!("DROP SCHEMA {schema} CASCADE"),
                format!("SELECT count(*) FROM {foreign_table}"),
                format!("DELETE FROM {foreign_table}"),
                format!("CREATE TABLE {foreign}.extra (id int)"),
                "CREATE SCHEMA extra".to_owned(),
                "CREATE TEMPORARY TABLE extra (id int)".to_owned(),
                "CREATE TABLE public.extra (id int)".to_owned(),
                "SELECT * FROM public.shared".to_owned(),
            ] {
                assert_denied(&mut connection, &login, &statement).await;
            }
        }
    }

    // The DML itself, row by row, as transaction-api's serving role.
    let login = db.transactions.app.clone();
    let mut connection = db.connect_as(&login).await;
    for statement in [
        "INSERT INTO transactions.transactions (id, user_id, amount, currency, status) VALUES ('txn_1', 'u', 1, 'BRL', 'completed')",
        "UPDATE transactions.transactions SET user_id = 'v' WHERE id = 'txn_1'",
        "SELECT * FROM transactions.transactions FOR UPDATE SKIP LOCKED",
        "SELECT * FROM transactions.dead_letters",
        "DELETE FROM transactions.transactions WHERE id = 'txn_1'",
    ] {
        assert_allowed(&mut connection, &login, statement).await;
    }
}

#[tokio::test]
async fn tables_and_sequences_added_by_later_migrations_are_granted_by_default() {
    let db = provisioned().await;
    db.migrate_both().await;
    // What a later migration does: the migration role, as the owner, adds objects.
    let mut migrator = db.connect_as(&db.transactions.migrator).await;
    let owner = platform::db::roles::quote_identifier(&db.transactions.owner);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {owner}; CREATE TABLE transactions.later (id bigserial PRIMARY KEY, note text)"
    )))
    .execute(&mut migrator)
    .await
    .expect("the migration role creates tables as the owner");

    let login = db.transactions.app.clone();
    let mut app = db.connect_as(&login).await;
    for statement in [
        "INSERT INTO transactions.later (note) VALUES ('a')",
        "SELECT nextval('transactions.later_id_seq')",
        "UPDATE transactions.later SET note = 'b'",
        "DELETE FROM transactions.later",
    ] {
        assert_allowed(&mut app, &login, statement).await;
    }
    assert_denied(&mut app, &login, "DROP TABLE transactions.later").await;
    let mut other = db.connect_as(&db.notifications.app).await;
    assert_denied(&mut other, &db.notifications.app, "SELECT * FROM transactions.later").await;
}

/// Both services running as their serving roles, without migrating at start: a transaction is
/// created, and its webhook is delivered and stored as a notification.
#[tokio::test]
async fn both_services_work_as_their_serving_roles() {
    let db = provisioned().await;
    db.migrate_both().await;
    let overrides = format!(
        "[server]\nhost = \"127.0.0.1\"\ndrain_delay = \"0s\"\n[telemetry]\nlog_level = \"warn\"\n\
         [webhook]\nsigning_key = \"{SIGNING_KEY}\"\n\
         [database]\nurl = \"{}\"\nssl_mode = \"disable\"\nmigrate_on_start = false\n{}",
        url_as(&db.url, &db.notifications.app),
        crate::helpers::ISSUER.auth_toml()
    );
    let config: notification_service::Config =
        load(&Sources::overridden(notification_service::DEFAULTS, overrides)).expect("config");
    let lifecycle = platform::server::Lifecycle::new();
    let service = notification_service::build(&config, &lifecycle).await.expect("builds without migrating");
    let notifier = TestServer::start(service, &config.server, lifecycle).await;

    let app = spawn_app_with(Options {
        database_url: Some(url_as(&db.url, &db.transactions.app)),
        webhook_url: notifier.url("/webhooks/transactions"),
        extra_toml: "[database]\nmigrate_on_start = false\n".to_owned(),
        ..Options::default()
    })
    .await;
    let response = app.post_transaction(&brl("least-privilege", "10.00")).await;
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.expect("json");

    let deadline = Instant::now() + Duration::from_secs(20);
    let items = loop {
        let items = notifications(&app.http, &notifier, "least-privilege").await;
        if !items.is_empty() || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(items.len(), 1, "the webhook was delivered and stored: {items:?}");
    let direct = app.http.post(notifier.url("/notify")).json(&json!({"user_id": "u", "message": "m"})).send().await;
    assert_eq!(direct.expect("sent").status().as_u16(), 201, "notification-service writes as its serving role");
    assert!(created["id"].is_string());
    app.server.stop().await;
    notifier.stop().await;
}
