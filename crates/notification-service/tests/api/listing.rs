//! `GET /notifications/{user_id}`: newest first, cursor pagination, parameter validation.

use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn notifications_are_newest_first_with_cursor_pagination() {
    let app = spawn_app().await;
    for i in 0..25 {
        assert_eq!(app.notify(&json!({"user_id": "u1", "message": format!("m{i}")})).await.status().as_u16(), 201);
        // Ids order by millisecond; within one their random parts order them arbitrarily.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    app.notify(&json!({"user_id": "someone-else", "message": "not yours"})).await;
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut query = "?limit=10".to_owned();
    loop {
        let page: Value = app.list("u1", &query).await.json().await.expect("json");
        let items = page["items"].as_array().expect("items");
        sizes.push(items.len());
        seen.extend(items.iter().map(|n| n["message"].as_str().expect("message").to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=10&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    let expected: Vec<String> = (0..25).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected, "newest first, no overlap, nothing missing");
}

#[tokio::test]
async fn default_page_size_applies_and_unknown_users_get_an_empty_page() {
    let app = spawn_app().await;
    for i in 0..21 {
        app.notify(&json!({"user_id": "u1", "message": format!("m{i}")})).await;
    }
    let page: Value = app.list("u1", "").await.json().await.expect("json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(20));
    assert!(page["next_cursor"].is_string());
    let empty: Value = app.list("nobody", "").await.json().await.expect("json");
    assert_eq!(empty, json!({"items": [], "next_cursor": null}));
}

#[tokio::test]
async fn limit_over_maximum_zero_or_non_numeric_is_422() {
    let app = spawn_app().await;
    for query in ["?limit=101", "?limit=0", "?limit=ten"] {
        let body = assert_problem(app.list("u1", query).await, 422).await;
        assert_eq!(body["errors"][0]["pointer"], "/limit", "{query}: {body}");
    }
}

#[tokio::test]
async fn invalid_cursor_and_unknown_parameters_are_422() {
    let app = spawn_app().await;
    let body = assert_problem(app.list("u1", "?cursor=txn_01").await, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/cursor");
    assert_problem(app.list("u1", "?page=2").await, 422).await;
}
