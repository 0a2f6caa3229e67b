//! The catalog, end to end through the gateway.

use std::collections::HashSet;

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

#[tokio::test]
async fn pages_cover_the_catalog_without_gaps_or_repeats() {
    let sys = System::start().await;
    let (status, all) = sys.get("/api/catalog/products?limit=100", None).await;
    assert_eq!(status, 200, "{all}");
    let total = all["data"]["items"].as_array().unwrap().len();
    assert!(total >= 20, "a demo catalog is seeded: {total}");
    assert!(all["data"]["nextCursor"].is_null());

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/catalog/products?limit=7&cursor={c}"),
            None => "/api/catalog/products?limit=7".to_string(),
        };
        let (status, body) = sys.get(&path, None).await;
        assert_eq!(status, 200, "{body}");
        let items = body["data"]["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_string()));
        pages += 1;
        match body["data"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, total.div_ceil(7));
    assert_eq!(seen.len(), total);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        total,
        "no repeats"
    );
    let ids: Vec<&str> = all["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ids, "same order, nothing skipped");

    // A category filter pages within the category.
    let (_, books) = sys
        .get("/api/catalog/products?category=books&limit=100", None)
        .await;
    let books = books["data"]["items"].as_array().unwrap();
    assert!(!books.is_empty());
    assert!(books.iter().all(|p| p["category"] == "books"));
    let p = &books[0];
    for key in [
        "id",
        "name",
        "description",
        "category",
        "price",
        "currency",
        "viewCount",
    ] {
        assert!(p.get(key).is_some(), "product has {key}: {p}");
    }
    assert!(p["price"].is_i64());
}

#[tokio::test]
async fn bad_queries_and_ids_are_4xx() {
    let sys = System::start().await;
    for (path, status, code) in [
        (
            "/api/catalog/products?cursor=garbage!",
            400,
            "invalid_cursor",
        ),
        (
            "/api/catalog/products?cursor=YWZ0ZXI6bm90LWEtdXVpZA",
            400,
            "invalid_cursor",
        ),
        ("/api/catalog/products?limit=0", 400, "invalid_limit"),
        ("/api/catalog/products?limit=1000", 400, "invalid_limit"),
        ("/api/catalog/products?limit=abc", 400, "invalid_query"),
        ("/api/catalog/products?limit=-1", 400, "invalid_query"),
        ("/api/catalog/products/not-a-uuid", 400, "invalid_path"),
        (
            "/api/catalog/products/0190f000-0000-7000-8000-999999999999",
            404,
            "not_found",
        ),
        ("/api/catalog/nothing-here", 404, "not_found"),
    ] {
        let (got, body) = sys.get(path, None).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert_eq!(body["success"], false);
    }
}

fn product(name: &str) -> Value {
    json!({"name": name, "description": "d", "category": "books", "price": 1234, "currency": "EUR"})
}

#[tokio::test]
async fn admins_manage_products_and_users_cannot() {
    let sys = System::start().await;
    let admin = sys.admin().await;
    let (user, _) = sys.new_user().await;

    let (status, body) = sys
        .post("/api/catalog/products", Some(&user), product("Nope"))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = sys
        .post("/api/catalog/products", None, product("Nope"))
        .await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = sys
        .post("/api/catalog/products", Some(&admin), product("New Book"))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["viewCount"], 0);
    assert_eq!(body["data"]["currency"], "EUR");

    // Invalid products are refused, and nothing is written.
    for bad in [
        json!({"name": "", "category": "books", "price": 1, "currency": "EUR"}),
        json!({"name": "x", "category": "Books!", "price": 1, "currency": "EUR"}),
        json!({"name": "x", "category": "books", "price": -1, "currency": "EUR"}),
        json!({"name": "x", "category": "books", "price": 1.5, "currency": "EUR"}),
        json!({"name": "x", "category": "books", "price": 1, "currency": "euro"}),
        json!({"name": "x", "category": "books", "price": 1, "currency": "EUR", "viewCount": 99}),
        json!({"category": "books", "price": 1, "currency": "EUR"}),
    ] {
        let (status, body) = sys
            .post("/api/catalog/products", Some(&admin), bad.clone())
            .await;
        assert_eq!(status, 400, "{bad} → {body}");
    }
    let (_, all) = sys.get("/api/catalog/products?limit=100", None).await;
    let names: Vec<&str> = all["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "x" || n.is_empty()).count(),
        0
    );
    assert_eq!(
        names.last(),
        Some(&"New Book"),
        "new products come last in id order"
    );

    let path = format!("/api/catalog/products/{id}");
    let (status, _) = sys
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&user),
            Some(product("Hijack")),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = sys
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&admin),
            Some(product("Renamed")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["name"], "Renamed");
    let (status, _) = sys
        .call(reqwest::Method::DELETE, &path, Some(&user), None)
        .await;
    assert_eq!(status, 403);
    let (status, body) = sys
        .call(reqwest::Method::DELETE, &path, Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"].is_null());
    assert_eq!(sys.get(&path, None).await.0, 404);
    assert_eq!(
        sys.call(reqwest::Method::DELETE, &path, Some(&admin), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn concurrent_views_count_exactly_across_replicas() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let id = "0190f000-0000-7000-8000-000000000003";
    let path = format!("/api/catalog/products/{id}");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let client = sys.http.clone();
        let url = sys.url(&path);
        tasks.spawn(async move {
            client.get(url).send().await.map(|r| {
                let wrote = r
                    .headers()
                    .get(tessera::store::session::HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(tessera::store::session::parse);
                (r.status().as_u16(), wrote)
            })
        });
    }
    // A view writes: the listing after them reads what they wrote, as a client that sends
    // back the highest `tessera-read-after` it was given would (a read replica may lag).
    let mut read_after = 0;
    while let Some(r) = tasks.join_next().await {
        let (status, wrote) = r.unwrap().unwrap();
        assert_eq!(status, 200);
        read_after = read_after.max(wrote.unwrap_or(0));
    }
    let list: serde_json::Value = sys
        .http
        .get(sys.url("/api/catalog/products?limit=100"))
        .header(
            tessera::store::session::HEADER,
            tessera::store::session::format(read_after),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = list["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(
        p["viewCount"], 100,
        "listing does not count as a view; 100 views count 100"
    );
    let (_, one) = sys.get(&path, None).await;
    assert_eq!(one["data"]["viewCount"], 101);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let sys = System::start_with(Options {
        max_body_bytes: 4096,
        ..Options::default()
    })
    .await;
    let admin = sys.admin().await;
    let big =
        json!({"name": "x".repeat(10_000), "category": "books", "price": 1, "currency": "EUR"});
    let (status, body) = sys.post("/api/catalog/products", Some(&admin), big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Chunked, without a Content-Length: still bounded.
    let status = raw_chunked_post(&sys.gateway, "/api/catalog/products", &admin, 10_000).await;
    assert_eq!(status, 413);
}

/// Sends a chunked POST over a raw socket and returns the status code.
async fn raw_chunked_post(base: &str, path: &str, token: &str, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 1000];
    for _ in 0..size / 1000 {
        if sock
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
            || sock.write_all(&chunk).await.is_err()
            || sock.write_all(b"\r\n").await.is_err()
        {
            break; // the gateway may answer and close before we finish
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 1024];
    let n = sock.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}
