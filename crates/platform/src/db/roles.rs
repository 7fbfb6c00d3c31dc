//! The PostgreSQL roles, schema and grants of each service, as the SQL statements the database
//! administrator (the RDS master user) runs. They are the specification of docs/adr/0008 until the
//! Crossplane composition declares the same objects with provider-sql; the tests provision their
//! databases with exactly these statements, so what is proven is what is specified.

/// What Secrets Manager's alternating-users rotation appends to a login role's name for its second
/// login; both logins are declared up front, so rotation only ever changes passwords.
pub const CLONE_SUFFIX: &str = "_clone";

/// The roles of one service's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRoles {
    /// The service's schema, e.g. `transactions`.
    pub schema: String,
    /// Owns the schema and everything in it. Cannot log in.
    pub owner: String,
    /// Logs in to run the migrations, which it does as `owner` (it is a member).
    pub migrator: String,
    /// Logs in to serve: USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on its tables and USAGE
    /// on its sequences (present and future), nothing else anywhere.
    pub app: String,
}

impl SchemaRoles {
    /// The roles every environment has for `schema`: `<schema>_owner`, `<schema>_migrator` and
    /// `<schema>_app` (each login with its `_clone`).
    pub fn for_schema(schema: &str) -> Self {
        Self::with_prefix(schema, schema)
    }

    /// The same roles named after `prefix` instead of the schema. Roles belong to the whole
    /// PostgreSQL server, so tests sharing one server give each database roles of its own.
    pub fn with_prefix(schema: &str, prefix: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            owner: format!("{prefix}_owner"),
            migrator: format!("{prefix}_migrator"),
            app: format!("{prefix}_app"),
        }
    }

    /// Every role that may log in: the migrator, the serving role and their rotation clones.
    pub fn logins(&self) -> [String; 4] {
        [self.migrator.clone(), clone_of(&self.migrator), self.app.clone(), clone_of(&self.app)]
    }

    /// Creates this service's roles, its schema and its grants in `database`. Run once, by the
    /// administrator, after [`database_statements`]; not idempotent (provider-sql reconciles the
    /// declared equivalents instead).
    pub fn statements(&self, database: &str) -> Vec<String> {
        let [owner, migrator, app, schema] =
            [&self.owner, &self.migrator, &self.app, &self.schema].map(|name| quote_identifier(name));
        let [migrator_clone, app_clone] = [&self.migrator, &self.app].map(|name| quote_identifier(&clone_of(name)));
        let database = quote_identifier(database);
        vec![
            format!("CREATE ROLE {owner} NOLOGIN"),
            format!("CREATE ROLE {migrator} LOGIN"),
            format!("CREATE ROLE {migrator_clone} LOGIN"),
            format!("CREATE ROLE {app} LOGIN"),
            format!("CREATE ROLE {app_clone} LOGIN"),
            // The migrator may become the owner; each clone holds what its original holds.
            format!("GRANT {owner} TO {migrator}"),
            format!("GRANT {migrator} TO {migrator_clone}"),
            format!("GRANT {app} TO {app_clone}"),
            // The RDS master user is no superuser: it creates the owner's schema and sets the
            // owner's default privileges as a member of the owner.
            format!("GRANT {owner} TO CURRENT_USER"),
            format!("GRANT CONNECT ON DATABASE {database} TO {migrator}, {app}"),
            format!("CREATE SCHEMA {schema} AUTHORIZATION {owner}"),
            format!("GRANT USAGE ON SCHEMA {schema} TO {app}"),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}"
            ),
            format!("ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT USAGE ON SEQUENCES TO {app}"),
        ]
    }
}

/// Run once per database, before any service's [`SchemaRoles::statements`]: only roles granted
/// CONNECT may connect (and nobody may create temporary tables), and nobody but its owner may use
/// the `public` schema.
pub fn database_statements(database: &str) -> Vec<String> {
    vec![
        format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_identifier(database)),
        "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
    ]
}

/// `name` as a PostgreSQL identifier: double-quoted, inner quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn clone_of(role: &str) -> String {
    format!("{role}{CLONE_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_environment_names_the_roles_after_the_schema() {
        let roles = SchemaRoles::for_schema("transactions");
        assert_eq!(
            (roles.owner.as_str(), roles.migrator.as_str(), roles.app.as_str()),
            ("transactions_owner", "transactions_migrator", "transactions_app")
        );
        assert_eq!(roles.logins()[3], "transactions_app_clone");
    }

    #[test]
    fn the_serving_role_gets_dml_and_nothing_that_creates() {
        let statements = SchemaRoles::for_schema("notifications").statements("quilla").join("\n");
        assert!(statements.contains(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"notifications_owner\" IN SCHEMA \"notifications\" \
             GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"notifications_app\""
        ));
        let to_app: Vec<&str> = statements.lines().filter(|line| line.ends_with("TO \"notifications_app\"")).collect();
        assert!(to_app.iter().all(|line| !line.contains("CREATE") && !line.contains("ALL")), "{to_app:?}");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(database_statements("test_x")[0], "REVOKE ALL ON DATABASE \"test_x\" FROM PUBLIC");
    }
}
