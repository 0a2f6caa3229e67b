//! Every SQL statement in the platform and the shop, planned by SQLite against its component's
//! real schema (all its migrations): it must prepare (no typo, no missing column), and a
//! statement that filters must use an index. A filter that scans a whole table costs nothing
//! in a test with ten rows and makes a service slower with every row it stores (the order
//! service's list projection once did exactly that, on every checkout).
//!
//! A statement without `WHERE` (a listing of a small table, an `ORDER BY … LIMIT`) may scan;
//! so may the few allowed below, each with its reason.

use std::path::{Path, PathBuf};

/// (table, why a filtered scan of it is fine).
const MAY_SCAN: &[(&str, &str)] = &[
    ("signing_keys", "a handful of keys"),
    ("tessera_outbox", "a queue: read from its head, in id order"),
    (
        "counted",
        "a saga count's own subquery: its rows, at most COUNTED, found through the index",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            // The plans checked here are SQLite's; PostgreSQL's migrations are its own.
            if path.file_name().is_some_and(|n| n == "postgres") {
                continue;
            }
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// The SQL literals passed to `query`, `query_as` and `query_scalar` in a source file, up to
/// its tests.
fn statements(source: &str) -> Vec<String> {
    let source = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut out = Vec::new();
    for call in [
        "query(",
        "query_as(",
        "query_scalar(",
        "query_as::<",
        "query_scalar::<",
    ] {
        let mut rest = source;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            let mut s = rest;
            if call.ends_with('<') {
                // Skip the turbofish to its call's parenthesis.
                let Some(open) = s.find(">(") else { continue };
                s = &s[open + 2..];
            }
            let s = s.trim_start();
            if let Some(raw) = s.strip_prefix("r#\"") {
                if let Some(end) = raw.find("\"#") {
                    out.push(raw[..end].to_string());
                }
            } else if let Some(quoted) = s.strip_prefix('"') {
                let mut text = String::new();
                let mut chars = quoted.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => text.push('\n'),
                            Some('\n') => {
                                // A line continuation: the next line's indentation is dropped.
                                let rest: String = chars.clone().collect();
                                let skipped = rest.len() - rest.trim_start().len();
                                for _ in 0..skipped {
                                    chars.next();
                                }
                            }
                            Some(other) => text.push(other),
                            None => break,
                        },
                        c => text.push(c),
                    }
                }
                out.push(text);
            }
        }
    }
    out
}

/// A database with every migration of `component` (and the library's own tables).
fn schema(component: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    let mut migrations = Vec::new();
    files(&component.join("migrations"), "sql", &mut migrations);
    files(
        &root().join("crates/events/migrations"),
        "sql",
        &mut migrations,
    );
    for m in migrations {
        let sql = std::fs::read_to_string(&m).unwrap();
        db.execute_batch(&sql)
            .unwrap_or_else(|e| panic!("{}: {e}", m.display()));
    }
    db
}

#[test]
fn every_statement_prepares_and_filters_by_an_index() {
    let root = root();
    let mut components: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut services = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("services")) {
        services = entries.flatten().map(|e| e.path()).collect();
    }
    services.sort();
    for service in services {
        components.push((service.clone(), vec![service.join("src")]));
    }
    components.push((
        root.join("crates/control"),
        vec![root.join("crates/control/src")],
    ));
    // The library's statements (outbox, inbox, leases, sagas), against a service that has
    // its tables.
    components.push((
        root.join("services/order"),
        vec![
            root.join("crates/tessera/src"),
            root.join("crates/events/src"),
        ],
    ));

    let mut checked = 0;
    let mut problems = Vec::new();
    for (component, sources) in &components {
        let db = schema(component);
        let mut rs = Vec::new();
        for dir in sources {
            files(dir, "rs", &mut rs);
        }
        for file in rs
            .iter()
            .filter(|f| !f.ends_with("store.rs") || f.starts_with(root.join("crates/control")))
        {
            let source = std::fs::read_to_string(file).unwrap();
            for sql in statements(&source) {
                // A statement with a `::` cast, or a table lock, is PostgreSQL's own (a
                // branch on the dialect); its plan is PostgreSQL's to choose.
                if sql.contains("::") || sql.starts_with("LOCK TABLE") {
                    continue;
                }
                checked += 1;
                let where_ = file
                    .strip_prefix(&root)
                    .unwrap_or(file)
                    .display()
                    .to_string();
                let plan = db
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .and_then(|mut stmt| {
                        let n = stmt.parameter_count();
                        for i in 1..=n {
                            stmt.raw_bind_parameter(i, rusqlite::types::Null)?;
                        }
                        let mut rows = stmt.raw_query();
                        let mut plan = Vec::new();
                        while let Some(row) = rows.next()? {
                            plan.push(row.get::<_, String>(3)?);
                        }
                        Ok(plan)
                    });
                let plan = match plan {
                    Ok(plan) => plan,
                    Err(e) => {
                        problems.push(format!("{where_}: does not prepare ({e}): {sql}"));
                        continue;
                    }
                };
                let filters = sql.to_ascii_uppercase().contains("WHERE");
                for step in plan.iter().filter(|s| s.starts_with("SCAN ")) {
                    let table = step["SCAN ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("");
                    if filters && !MAY_SCAN.iter().any(|(t, _)| *t == table) {
                        problems.push(format!(
                            "{where_}: {step}: {}",
                            sql.split_whitespace().collect::<Vec<_>>().join(" ")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 80,
        "found only {checked} statements: is the extraction broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_extraction_reads_every_form() {
    let src = r####"
        query("SELECT 1").execute(x);
        query_as::<(String,)>("SELECT \"a\" FROM t WHERE id = $1");
        tessera::store::query_scalar(r#"SELECT "offset" FROM e"#);
        query_as(
            "SELECT a \
             FROM b",
        );
        #[cfg(test)]
        query("SELECT hidden");
    "####;
    let mut found = statements(src);
    found.sort();
    assert_eq!(
        found,
        [
            "SELECT \"a\" FROM t WHERE id = $1",
            "SELECT \"offset\" FROM e",
            "SELECT 1",
            "SELECT a FROM b",
        ]
    );
}
