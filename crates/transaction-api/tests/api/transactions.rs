//! Creating and reading transactions: happy paths and every error status.

use serde_json::{Value, json};

use crate::helpers::{assert_problem, brl, spawn_app};

#[tokio::test]
async fn create_returns_201_with_location_and_exact_amount() {
    let app = spawn_app().await;
    let response = app.post_transaction(&brl("u1", "100.50")).await;
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().expect("ascii").to_owned();
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    assert!(platform::ids::is_valid_id("txn", id), "{id}");
    assert_eq!(location, format!("/transactions/{id}"));
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["amount"], "100.50");
    assert_eq!(body["currency"], "BRL");
    assert_eq!(body["status"], "completed");
    assert!(body["created_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    let stored: String = sqlx::query_scalar("SELECT amount::text FROM transactions WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(stored, "100.5000", "NUMERIC keeps the exact value");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE transaction_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("outbox");
    assert_eq!(outbox, 1, "the webhook event is written with the transaction");
}

#[tokio::test]
async fn get_returns_the_created_transaction() {
    let app = spawn_app().await;
    let created: Value = app.post_transaction(&brl("u1", "7.25")).await.json().await.expect("json");
    let response = app.get(&format!("/transactions/{}", created["id"].as_str().expect("id"))).await;
    assert_eq!(response.status().as_u16(), 200);
    let fetched: Value = response.json().await.expect("json");
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn amounts_are_exact_from_numbers_and_strings() {
    let app = spawn_app().await;
    for (amount, currency, expected) in [
        (json!(0.1), "EUR", "0.10"),
        (json!("19.99"), "MXN", "19.99"),
        (json!(1000), "JPY", "1000"),
        (json!("1.005"), "KWD", "1.005"),
        (serde_json::from_str::<Value>("12345678.99").expect("number"), "BRL", "12345678.99"),
    ] {
        let response = app.post_transaction(&json!({"user_id": "u1", "amount": amount, "currency": currency})).await;
        assert_eq!(response.status().as_u16(), 201, "{amount} {currency}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["amount"], expected, "{amount} {currency}");
    }
}

#[tokio::test]
async fn unknown_transaction_is_404_problem() {
    let app = spawn_app().await;
    let unknown = platform::ids::new_id("txn");
    let body = assert_problem(app.get(&format!("/transactions/{unknown}")).await, 404).await;
    assert!(body["detail"].as_str().is_some_and(|d| d.contains(&unknown)), "{body}");
    assert_problem(app.get("/transactions/not-an-id").await, 404).await;
}

#[tokio::test]
async fn every_invalid_field_is_listed_in_one_422() {
    let app = spawn_app().await;
    let response = app.post_transaction(&json!({"user_id": "", "amount": -5, "currency": "XYZ"})).await;
    let body = assert_problem(response, 422).await;
    let pointers: Vec<&str> =
        body["errors"].as_array().expect("errors").iter().filter_map(|e| e["pointer"].as_str()).collect();
    assert_eq!(pointers, ["/user_id", "/currency", "/amount"], "{body}");
    assert_eq!(app.transaction_count().await, 0, "nothing is stored");
}

#[tokio::test]
async fn amount_rules_are_enforced() {
    let app = spawn_app().await;
    for (amount, currency, hint) in [
        (json!("100.505"), "BRL", "at most 2 decimal places"),
        (json!(1.5), "JPY", "at most 0 decimal places"),
        (json!(0), "EUR", "greater than zero"),
        (json!("1000000000.01"), "EUR", "must not exceed"),
        (json!("12abc"), "EUR", "decimal number"),
        (json!(true), "EUR", "decimal number"),
        (json!(null), "EUR", "decimal number"),
    ] {
        let response = app.post_transaction(&json!({"user_id": "u1", "amount": amount, "currency": currency})).await;
        let body = assert_problem(response, 422).await;
        assert_eq!(body["errors"][0]["pointer"], "/amount", "{body}");
        assert!(body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains(hint)), "{amount}: {body}");
    }
    assert_eq!(app.transaction_count().await, 0);
}

#[tokio::test]
async fn unknown_fields_and_missing_fields_are_422() {
    let app = spawn_app().await;
    let unknown = app.post_transaction(&json!({"user_id": "u1", "amount": 1, "currency": "EUR", "fee": 1})).await;
    let body = assert_problem(unknown, 422).await;
    assert!(body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("unknown field `fee`")), "{body}");
    let missing = app.post_transaction(&json!({"user_id": "u1", "amount": 1})).await;
    let body = assert_problem(missing, 422).await;
    assert!(body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("currency")), "{body}");
}

#[tokio::test]
async fn malformed_json_is_400_and_non_json_is_415() {
    let app = spawn_app().await;
    assert_problem(app.post_raw("application/json", "{\"user_id\":".to_owned(), None).await, 400).await;
    assert_problem(app.post_raw("text/plain", brl("u1", "1").to_string(), None).await, 415).await;
    assert_problem(app.post_raw("application/x-www-form-urlencoded", "user_id=u1".to_owned(), None).await, 415).await;
}

#[tokio::test]
async fn a_json_body_sent_form_encoded_is_415_since_browsers_send_forms_cross_origin_without_preflight() {
    let app = spawn_app().await;
    let body = r#"{"user_id":"u1","amount":100.50,"currency":"BRL"}"#.to_owned();
    assert_problem(app.post_raw("application/x-www-form-urlencoded", body, None).await, 415).await;
    assert_eq!(app.transaction_count().await, 0);
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_400_problem() {
    let app = spawn_app().await;
    assert_problem(app.get("/transactions/%FF%FE").await, 400).await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = spawn_app().await;
    let huge = json!({"user_id": "u".repeat(20_000), "amount": 1, "currency": "EUR"});
    assert_problem(app.post_transaction(&huge).await, 413).await;
}

#[tokio::test]
async fn wrong_method_and_unknown_route_are_problems() {
    let app = spawn_app().await;
    let response = app.http.delete(app.server.url("/transactions")).send().await.expect("sent");
    assert_problem(response, 405).await;
    assert_problem(app.get("/nope").await, 404).await;
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let echoed = app.http.get(app.server.url("/health")).header("x-request-id", "abc-123").send().await.expect("sent");
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let generated = app.get("/health").await;
    assert!(generated.headers().get("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn health_ready_metrics_and_openapi_respond() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    let ready: Value = app.get("/ready").await.json().await.expect("json");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["postgres"], "up");
    assert_eq!(ready["checks"]["redis"], "up");

    let created: Value = app.post_transaction(&brl("u1", "3.00")).await.json().await.expect("json");
    app.get(&format!("/transactions/{}", created["id"].as_str().expect("id"))).await;
    let metrics = app.get("/metrics").await.text().await.expect("text");
    for expected in [
        r#"http_requests_total{method="POST",route="/transactions",status="201"}"#,
        r#"http_requests_total{method="GET",route="/transactions/{id}",status="200"}"#,
        "http_request_duration_seconds_bucket",
        r#"transactions_created_total{currency="BRL"}"#,
        "transaction_amount_bucket",
        "cache_operations_total",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    assert!(!metrics.contains(created["id"].as_str().expect("id")), "routes are labelled by template, not raw path");

    let openapi: Value = app.get("/openapi.json").await.json().await.expect("json");
    assert!(openapi["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{openapi}");
    assert!(openapi["paths"]["/transactions"]["post"].is_object());
    assert!(openapi["paths"]["/transactions/{id}"]["get"].is_object());
}

#[tokio::test]
async fn ready_is_503_when_the_database_is_unreachable() {
    let closed_port = platform::testkit::free_port();
    let options = crate::helpers::Options {
        database_url: Some(format!("postgres://postgres@127.0.0.1:{closed_port}/none")),
        extra_toml: "[database]\nmigrate_on_start = false\nacquire_timeout = \"300ms\"\n".to_owned(),
        ..Default::default()
    };
    let app = crate::helpers::spawn_app_with(options).await;
    let body = assert_problem(app.get("/ready").await, 503).await;
    assert_eq!(body["checks"]["postgres"], "down", "{body}");
    assert_eq!(app.get("/health").await.status().as_u16(), 200, "liveness has no dependencies");
    assert_problem(app.post_transaction(&brl("u1", "1")).await, 503).await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_with_retry_after() {
    let options = crate::helpers::Options {
        extra_toml: "[server.rate_limit]\nrequests_per_second = 1\nburst = 2\n".to_owned(),
        ..Default::default()
    };
    let app = crate::helpers::spawn_app_with(options).await;
    let unknown = format!("/transactions/{}", platform::ids::new_id("txn"));
    assert_eq!(app.get(&unknown).await.status().as_u16(), 404);
    assert_eq!(app.get(&unknown).await.status().as_u16(), 404);
    let limited = app.get(&unknown).await;
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_problem(limited, 429).await;
    assert_eq!(app.get("/health").await.status().as_u16(), 200, "probes are never rate limited");
}

/// A create request whose `amount` is `amount` byte for byte (a JSON number or a quoted string).
fn raw_body(amount: &str, currency: &str) -> String {
    format!(r#"{{"user_id":"u1","amount":{amount},"currency":"{currency}"}}"#)
}

#[tokio::test]
async fn amounts_that_would_need_rounding_or_reinterpreting_are_422() {
    let app = spawn_app().await;
    for (amount, currency, hint) in [
        // Rounded to 100.00 before amounts were parsed strictly.
        ("100.000000000000000000000000000001e0", "BRL", "at most 24 digits"),
        (r#""100.000000000000000000000000000001e0""#, "BRL", "at most 24 digits"),
        ("1234567890123456789012345", "JPY", "at most 24 digits"),
        // Exponents are fine only when the value is exact at the currency's scale.
        ("1.234e0", "BRL", "BRL allows at most 2 decimal places"),
        (r#""1.234e0""#, "BRL", "BRL allows at most 2 decimal places"),
        ("1e-3", "BRL", "BRL allows at most 2 decimal places"),
        ("1.5e0", "JPY", "JPY allows at most 0 decimal places"),
        ("1.00001", "KWD", "KWD allows at most 3 decimal places"),
        ("1e21", "BRL", "must not exceed"),
        // Accepted as 1000.00 before.
        (r#""1_000e0""#, "BRL", "decimal number"),
        (r#""1_000""#, "BRL", "decimal number"),
        (r#""NaN""#, "BRL", "decimal number"),
        (r#""Infinity""#, "BRL", "decimal number"),
        (r#""-Infinity""#, "BRL", "decimal number"),
        (r#""+5""#, "BRL", "decimal number"),
        (r#"" 5""#, "BRL", "decimal number"),
        (r#""5 ""#, "BRL", "decimal number"),
        (r#""05""#, "BRL", "decimal number"),
        (r#"".5""#, "BRL", "decimal number"),
        (r#""5.""#, "BRL", "decimal number"),
        (r#""0x10""#, "BRL", "decimal number"),
        (r#""1,50""#, "BRL", "decimal number"),
        (r#""""#, "BRL", "decimal number"),
        ("[1]", "BRL", "decimal number"),
        (r#"{"value":1}"#, "BRL", "decimal number"),
        ("0e5", "BRL", "greater than zero"),
        ("-0", "BRL", "greater than zero"),
        (r#""-1.5""#, "BRL", "greater than zero"),
    ] {
        let response = app.post_raw("application/json", raw_body(amount, currency), None).await;
        let body = assert_problem(response, 422).await;
        assert_eq!(body["errors"][0]["pointer"], "/amount", "{amount} {currency}: {body}");
        let detail = body["errors"][0]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(hint), "{amount} {currency}: {body}");
        assert_eq!(body["errors"].as_array().map(Vec::len), Some(1), "{amount} {currency}: {body}");
    }
    assert_eq!(app.transaction_count().await, 0, "nothing is stored");
}

#[tokio::test]
async fn accepted_amounts_keep_their_exact_value_when_read_back() {
    let app = spawn_app().await;
    for (amount, currency, expected, stored) in [
        ("1.5e1", "BRL", "15.00", "15.0000"),
        (r#""1.5e1""#, "BRL", "15.00", "15.0000"),
        ("1.005E+2", "BRL", "100.50", "100.5000"),
        ("100.500", "BRL", "100.50", "100.5000"),
        ("1e-2", "EUR", "0.01", "0.0100"),
        ("12000e-3", "JPY", "12", "12.0000"),
        ("1E3", "JPY", "1000", "1000.0000"),
        (r#""0.001""#, "KWD", "0.001", "0.0010"),
        ("999999999.99", "MXN", "999999999.99", "999999999.9900"),
        ("1000000000", "BRL", "1000000000.00", "1000000000.0000"),
        ("0.01", "USD", "0.01", "0.0100"),
    ] {
        let response = app.post_raw("application/json", raw_body(amount, currency), None).await;
        assert_eq!(response.status().as_u16(), 201, "{amount} {currency}");
        let created: Value = response.json().await.expect("json");
        assert_eq!(created["amount"], expected, "{amount} {currency}");
        let id = created["id"].as_str().expect("id");
        let fetched: Value = app.get(&format!("/transactions/{id}")).await.json().await.expect("json");
        assert_eq!(fetched["amount"], expected, "{amount} {currency}: read back");
        let in_database: String = sqlx::query_scalar("SELECT amount::text FROM transactions WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
        assert_eq!(in_database, stored, "{amount} {currency}");
    }
}

#[tokio::test]
async fn the_largest_amount_the_column_holds_round_trips_when_configured() {
    let options = crate::helpers::Options {
        extra_toml: "[transactions]\nmax_amount = \"99999999999999999999.9999\"\nextra_currencies = [\"CLF\"]\n"
            .to_owned(),
        ..Default::default()
    };
    let app = crate::helpers::spawn_app_with(options).await;
    let response = app.post_raw("application/json", raw_body("99999999999999999999.9999", "CLF"), None).await;
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["amount"], "99999999999999999999.9999");
    let fetched: Value =
        app.get(&format!("/transactions/{}", created["id"].as_str().expect("id"))).await.json().await.expect("json");
    assert_eq!(fetched["amount"], "99999999999999999999.9999");
    let over = app.post_raw("application/json", raw_body("100000000000000000000", "CLF"), None).await;
    let body = assert_problem(over, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/amount", "{body}");
}

#[tokio::test]
async fn the_amount_column_is_what_the_limits_are_derived_from() {
    let app = spawn_app().await;
    let (precision, scale): (i32, i32) = sqlx::query_as(
        "SELECT numeric_precision, numeric_scale FROM information_schema.columns
         WHERE table_schema = 'transactions' AND table_name = 'transactions' AND column_name = 'amount'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("column");
    assert_eq!((precision, scale), (24, 4));
    assert_eq!(
        (precision.cast_unsigned(), scale.cast_unsigned()),
        (transaction_api::AMOUNT_PRECISION, transaction_api::AMOUNT_SCALE)
    );
}

#[tokio::test]
async fn fund_metal_and_special_codes_are_422_unless_configured() {
    let app = spawn_app().await;
    let not_currencies = [
        "MXV", "BOV", "CLF", "COU", "USN", "UYI", "UYW", "CHE", "CHW", "XSU", "XUA", "XAU", "XAG", "XTS", "XXX", "XDR",
        "XAD", "XBA",
    ];
    for code in not_currencies {
        let body = assert_problem(app.post_raw("application/json", raw_body("1", code), None).await, 422).await;
        assert_eq!(body["errors"][0]["pointer"], "/currency", "{code}: {body}");
    }
    for code in ["MXN", "CLP", "COP", "BOB", "USD", "UYU", "CHF", "XOF", "XAF", "XCD"] {
        let response = app.post_raw("application/json", raw_body("1", code), None).await;
        assert_eq!(response.status().as_u16(), 201, "{code}");
    }
    let options = crate::helpers::Options {
        extra_toml: "[transactions]\nextra_currencies = [\"CLF\", \"MXV\"]\n".to_owned(),
        ..Default::default()
    };
    let configured = crate::helpers::spawn_app_with(options).await;
    for (amount, code, expected) in [("1.2345", "CLF", "1.2345"), ("10.5", "MXV", "10.50")] {
        let response = configured.post_raw("application/json", raw_body(amount, code), None).await;
        assert_eq!(response.status().as_u16(), 201, "{code}");
        let created: Value = response.json().await.expect("json");
        assert_eq!(created["amount"], expected, "{code}");
    }
    let body = assert_problem(configured.post_raw("application/json", raw_body("1", "BOV"), None).await, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/currency", "only the configured codes: {body}");
}

#[tokio::test]
async fn concurrent_creates_get_ids_whose_random_parts_are_not_neighbours() {
    let app = spawn_app().await;
    let bodies: Vec<Value> = (0..40).map(|i| brl(&format!("u{i}"), "1")).collect();
    let creates = bodies.iter().map(|body| app.post_transaction(body));
    let mut random = Vec::new();
    for response in futures::future::join_all(creates).await {
        assert_eq!(response.status().as_u16(), 201);
        let created: Value = response.json().await.expect("json");
        let id = created["id"].as_str().expect("id");
        let ulid = ulid::Ulid::from_string(id.strip_prefix("txn_").expect("prefix")).expect("ULID");
        random.push(ulid.random());
    }
    random.sort_unstable();
    let closest = random.windows(2).map(|w| w[1] - w[0]).min().expect("pairs");
    // Ids made in one millisecond used to differ by 1; 40 uniform 80-bit values are never this close.
    assert!(closest >= 1 << 40, "two ids' random parts differ by only {closest}");
}
