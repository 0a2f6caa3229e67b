//! The services' database URLs in the manifest: their form, checked at load without ever
//! repeating a password, and a parse error's quoted line with its passwords hidden.

/// Whether `url` names a database a service can open; the message never repeats the URL
/// (it may hold a password).
pub(crate) fn check_database_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not a URL (sqlite://<file> or postgres://<user>@<host>/<database>)".into());
    };
    match scheme {
        "sqlite" if !rest.is_empty() => Ok(()),
        "postgres" | "postgresql" => {
            let path = rest.split('?').next().unwrap_or_default();
            // After the user (and password), if any: the host, then the database.
            let path = path.rsplit_once('@').map_or(path, |(_, host)| host);
            match path.split_once('/') {
                Some((host, db)) if !host.is_empty() && !db.is_empty() => Ok(()),
                _ => Err("a PostgreSQL URL names a host and a database: postgres://<user>@<host>/<database>".into()),
            }
        }
        "sqlite" => Err("sqlite:// names no file".into()),
        other => Err(format!(
            "{other}:// is not a database this runs on (sqlite or postgres)"
        )),
    }
}

/// `text` (an error that may quote a line of the manifest) with the password of any URL in it
/// (`scheme://user:password@`) replaced by `***`.
pub(crate) fn hide_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.split_once('@') {
            Some((user, host)) if user.contains(':') => {
                let name = user.split_once(':').map_or(user, |(n, _)| n);
                out.push_str(&format!("{name}:***@{host}"));
            }
            _ => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Whether `url` names a read replica: a PostgreSQL database.
pub(crate) fn check_replica_url(url: &str) -> Result<(), String> {
    check_database_url(url)?;
    if url.starts_with("sqlite") {
        return Err("read replicas are PostgreSQL databases".into());
    }
    Ok(())
}
