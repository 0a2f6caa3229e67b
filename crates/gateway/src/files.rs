//! Static files: a web page and its scripts, styles and images, served by the gateway itself
//! under a path prefix (`[[files]]` in the manifest), so that a system's browser front end
//! needs no web server of its own beside the gateway (seed 000 put Nginx in front for that).
//!
//! A directory is read whole into memory when the gateway starts and again on every reload
//! (`reload.rs`): a request is answered from memory, with no disk read and no copy (the body is
//! a shared `Bytes`), and a reload publishes a new version of the files at once, as it does the
//! routes. That suits what such a directory holds, a page of a few files; a mount is refused
//! past [`MAX_BYTES`] or [`MAX_FILES`]. Hidden files (a name starting with `.`) and symbolic
//! links are left out, so neither a `.env` beside the page nor a link out of the directory is
//! ever served.
//!
//! Caching follows what browsers and CDNs expect: every file has a strong `ETag` (a hash of its
//! bytes) and a `Last-Modified`, and a conditional request that still matches (`If-None-Match`,
//! else `If-Modified-Since`) gets `304` without the body. A page (`.html`) is `no-cache`: it is
//! revalidated on every load, so a new version is seen at once; everything else may be kept
//! for `max_age_secs`. `GET` and `HEAD` only; other methods get `405`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, StatusCode};
use tessera_manifest::FilesRoute;

use crate::error::GatewayError;
use crate::server::{HeaderBuf, Request};

/// The most a mount may hold, in bytes.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The most files a mount may hold.
pub const MAX_FILES: usize = 10_000;

/// A directory, read, under its prefix.
pub struct Mount {
    /// Without a trailing slash.
    pub prefix: String,
    /// The prefix again, shared: the request's span and metrics label.
    pub label: Arc<str>,
    /// By path under the prefix, without its leading slash (`app.js`, `img/logo.svg`).
    files: HashMap<String, File>,
    index: String,
    /// `Cache-Control` of everything but pages.
    cache_control: String,
}

struct File {
    body: Bytes,
    content_type: &'static str,
    etag: String,
    last_modified: String,
    modified: SystemTime,
    page: bool,
}

impl Mount {
    /// Reads `spec.dir`, relative to `base` (the manifest's directory).
    pub fn load(spec: &FilesRoute, base: &Path) -> Result<Mount, String> {
        let dir = base.join(&spec.dir);
        let tree = read_tree(&dir)
            .map_err(|e| format!("files {:?}: {}: {e}", spec.prefix, dir.display()))?;
        let files = tree
            .into_iter()
            .map(|file| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                file.body.hash(&mut hasher);
                let extension = file.path.rsplit_once('.').map_or("", |(_, e)| e);
                let served = File {
                    etag: format!("\"{:016x}-{:x}\"", hasher.finish(), file.body.len()),
                    last_modified: httpdate::fmt_http_date(file.modified),
                    modified: file.modified,
                    content_type: content_type(extension),
                    page: matches!(extension, "html" | "htm"),
                    body: Bytes::from(file.body),
                };
                (file.path, served)
            })
            .collect();
        let prefix = spec.prefix.trim_end_matches('/').to_string();
        Ok(Mount {
            label: Arc::from(if prefix.is_empty() { "/" } else { &prefix }),
            prefix,
            files,
            index: spec.index.clone(),
            cache_control: format!("public, max-age={}", spec.max_age_secs),
        })
    }

    /// How many files it holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether `path` is under this mount's prefix (at a segment boundary).
    pub fn matches(&self, path: &str) -> bool {
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || self.prefix.is_empty())
    }

    /// Answers `req`, a request under this mount's prefix.
    pub fn serve(
        &self,
        req: &Request<'_>,
        headers: &mut HeaderBuf,
    ) -> Result<(StatusCode, Bytes), GatewayError> {
        if req.method != Method::GET && req.method != Method::HEAD {
            headers.push(b"allow", b"GET, HEAD");
            return Err(GatewayError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "static files are read with GET or HEAD",
            ));
        }
        let rest = req.path[self.prefix.len()..].trim_start_matches('/');
        let file = if rest.is_empty() || rest.ends_with('/') {
            self.files.get(&format!("{rest}{}", self.index))
        } else {
            self.files.get(rest)
        };
        // A directory asked for without its slash: its index, under the directory's URL, so
        // that the page's relative links resolve inside it.
        let Some(file) = file else {
            if self.files.contains_key(&format!("{rest}/{}", self.index)) {
                let mut location = String::with_capacity(req.path.len() + 1);
                location.push_str(req.path);
                location.push('/');
                headers.push(b"location", location.as_bytes());
                return Ok((StatusCode::PERMANENT_REDIRECT, Bytes::new()));
            }
            return Err(GatewayError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such file",
            ));
        };
        headers.push(b"etag", file.etag.as_bytes());
        headers.push(b"last-modified", file.last_modified.as_bytes());
        headers.push(
            b"cache-control",
            if file.page {
                b"no-cache"
            } else {
                self.cache_control.as_bytes()
            },
        );
        if not_modified(req, file) {
            return Ok((StatusCode::NOT_MODIFIED, Bytes::new()));
        }
        headers.push(b"content-type", file.content_type.as_bytes());
        headers.push(b"x-content-type-options", b"nosniff");
        Ok((StatusCode::OK, file.body.clone()))
    }
}

/// Whether the client's copy is still this file (RFC 9110 §13.1: `If-None-Match` wins over
/// `If-Modified-Since`).
fn not_modified(req: &Request<'_>, file: &File) -> bool {
    if let Some(tags) = req.fields.get_str("if-none-match") {
        return tags
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == file.etag);
    }
    req.fields
        .get_str("if-modified-since")
        .and_then(|d| httpdate::parse_http_date(d).ok())
        // HTTP dates are whole seconds.
        .is_some_and(|since| {
            let secs = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            };
            secs(file.modified) <= secs(since)
        })
}

/// A file of a directory to serve, as read.
pub struct TreeFile {
    /// Its path under the directory (`app.js`, `img/logo.svg`).
    pub path: String,
    pub body: Vec<u8>,
    pub modified: SystemTime,
}

/// Every file under `dir` that would be served, read: what the gateway holds for a mount, and
/// what `tessera deploy` puts in the cluster for it (one rule for both). Hidden files, symbolic
/// links and names a URL cannot carry as they are stay out (`//!`); past [`MAX_FILES`] files
/// or [`MAX_BYTES`] it is an error.
pub fn read_tree(dir: &Path) -> std::io::Result<Vec<TreeFile>> {
    let mut files = Vec::new();
    read_dir(dir, "", &mut files, &mut 0)?;
    Ok(files)
}

fn read_dir(
    dir: &Path,
    under: &str,
    into: &mut Vec<TreeFile>,
    bytes: &mut u64,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let kind = entry.file_type()?;
        if name.starts_with('.') || kind.is_symlink() || !name.bytes().all(plain) {
            continue;
        }
        let path = format!("{under}{name}");
        if kind.is_dir() {
            read_dir(&entry.path(), &format!("{path}/"), into, bytes)?;
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        // The size first (a stray large file is refused, not read), then the file, opened so
        // that a link swapped in meanwhile is not followed.
        *bytes += entry.metadata()?.len();
        if *bytes > MAX_BYTES || into.len() >= MAX_FILES {
            return Err(std::io::Error::other(format!(
                "more than {MAX_FILES} files or {} MiB: a static mount is for a page's few files",
                MAX_BYTES >> 20
            )));
        }
        let body = read_no_follow(&entry.path())?;
        let modified = entry
            .metadata()?
            .modified()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        into.push(TreeFile {
            path,
            body,
            modified,
        });
    }
    Ok(())
}

/// A file's bytes, refusing a symbolic link (`O_NOFOLLOW`).
fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut body = Vec::new();
    file.read_to_end(&mut body)?;
    Ok(body)
}

/// A byte a file name may have to be served: letters, digits and `-._~` (unreserved in a URL).
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The media type of a file by its extension.
fn content_type(extension: &str) -> &'static str {
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dir: &Path) -> Mount {
        Mount::load(
            &FilesRoute {
                prefix: "/app/".into(),
                dir: dir.into(),
                index: "index.html".into(),
                max_age_secs: 60,
            },
            Path::new("/"),
        )
        .unwrap()
    }

    fn request<'a>(
        method: Method,
        path: &'a str,
        fields: crate::fields::Fields<'a>,
    ) -> Request<'a> {
        Request {
            method,
            target: path,
            path,
            fields,
            body: Ok(&[]),
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            secure: false,
            start: tokio::time::Instant::now(),
        }
    }

    /// A directory of the test's own, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("tessera-files-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn site() -> TempDir {
        let dir = TempDir::new();
        std::fs::write(dir.path().join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(dir.path().join("app.js"), "let x = 1;").unwrap();
        std::fs::write(dir.path().join(".env"), "SECRET=1").unwrap();
        std::fs::create_dir(dir.path().join("img")).unwrap();
        std::fs::write(dir.path().join("img/logo.svg"), "<svg/>").unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("docs/index.html"), "<p>docs</p>").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("host.txt")).unwrap();
        dir
    }

    fn answer(
        m: &Mount,
        method: Method,
        path: &str,
        head: &[(&str, &str)],
    ) -> (u16, Vec<u8>, String) {
        let mut raw = Vec::new();
        let mut fields = Vec::new();
        for (k, v) in head {
            crate::fields::push(&mut raw, &mut fields, k.as_bytes(), v.as_bytes());
        }
        let fields = crate::fields::Fields::new(&raw, &fields);
        let req = request(method, path, fields);
        let mut headers = HeaderBuf::default();
        let (status, body) = match m.serve(&req, &mut headers) {
            Ok((s, b)) => (s.as_u16(), b.to_vec()),
            Err(e) => (e.status.as_u16(), Vec::new()),
        };
        let headers = headers
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}: {}\n",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        (status, body, headers)
    }

    #[test]
    fn files_are_served_with_their_type_and_caching_headers() {
        let dir = site();
        let m = mount(dir.path());
        assert!(m.matches("/app") && m.matches("/app/x") && !m.matches("/apps"));
        let (status, body, headers) = answer(&m, Method::GET, "/app/app.js", &[]);
        assert_eq!((status, body.as_slice()), (200, &b"let x = 1;"[..]));
        assert!(headers.contains("text/javascript"), "{headers}");
        assert!(headers.contains("public, max-age=60"), "{headers}");
        assert!(headers.contains("etag: \""), "{headers}");
        assert!(headers.contains("last-modified: "), "{headers}");
        // The index, for the directory; a page is always revalidated.
        let (status, body, headers) = answer(&m, Method::GET, "/app/", &[]);
        assert_eq!((status, body.as_slice()), (200, &b"<h1>hi</h1>"[..]));
        assert!(headers.contains("no-cache"), "{headers}");
        assert_eq!(answer(&m, Method::GET, "/app", &[]).0, 200);
        assert_eq!(answer(&m, Method::GET, "/app/img/logo.svg", &[]).0, 200);
        // A directory without its slash is sent to it.
        let (status, _, headers) = answer(&m, Method::GET, "/app/docs", &[]);
        assert_eq!(status, 308);
        assert!(headers.contains("location: /app/docs/"), "{headers}");
        assert_eq!(answer(&m, Method::GET, "/app/docs/", &[]).1, b"<p>docs</p>");
    }

    #[test]
    fn hidden_files_links_and_other_methods_are_refused() {
        let dir = site();
        let m = mount(dir.path());
        assert_eq!(m.len(), 4);
        assert_eq!(answer(&m, Method::GET, "/app/.env", &[]).0, 404);
        assert_eq!(answer(&m, Method::GET, "/app/host.txt", &[]).0, 404);
        assert_eq!(answer(&m, Method::GET, "/app/nothing.js", &[]).0, 404);
        let (status, _, headers) = answer(&m, Method::POST, "/app/app.js", &[]);
        assert_eq!(status, 405);
        assert!(headers.contains("allow: GET, HEAD"), "{headers}");
        assert_eq!(answer(&m, Method::HEAD, "/app/app.js", &[]).0, 200);
    }

    #[test]
    fn a_copy_still_current_is_not_sent_again() {
        let dir = site();
        let m = mount(dir.path());
        let (_, _, headers) = answer(&m, Method::GET, "/app/app.js", &[]);
        let field = |name: &str| {
            headers
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        let (etag, modified) = (field("etag:"), field("last-modified:"));
        let (status, body, _) = answer(&m, Method::GET, "/app/app.js", &[("if-none-match", &etag)]);
        assert_eq!((status, body.len()), (304, 0));
        let listed = format!("\"other\", W/{etag}");
        assert_eq!(
            answer(
                &m,
                Method::GET,
                "/app/app.js",
                &[("if-none-match", &listed)]
            )
            .0,
            304
        );
        assert_eq!(
            answer(
                &m,
                Method::GET,
                "/app/app.js",
                &[("if-none-match", "\"other\"")]
            )
            .0,
            200
        );
        assert_eq!(
            answer(
                &m,
                Method::GET,
                "/app/app.js",
                &[("if-modified-since", &modified)]
            )
            .0,
            304
        );
        // If-None-Match wins over If-Modified-Since.
        let both = [
            ("if-none-match", "\"other\""),
            ("if-modified-since", modified.as_str()),
        ];
        assert_eq!(answer(&m, Method::GET, "/app/app.js", &both).0, 200);
        let old = "Mon, 01 Jan 1990 00:00:00 GMT";
        assert_eq!(
            answer(
                &m,
                Method::GET,
                "/app/app.js",
                &[("if-modified-since", old)]
            )
            .0,
            200
        );
        // Another file's tag is not this one's.
        std::fs::write(dir.path().join("app.js"), "let x = 2;").unwrap();
        let m = mount(dir.path());
        assert_eq!(
            answer(&m, Method::GET, "/app/app.js", &[("if-none-match", &etag)]).0,
            200
        );
    }

    #[test]
    fn the_longest_prefix_wins_between_routes_and_files() {
        let dir = site();
        let text = format!(
            "[[route]]\nprefix = \"/api\"\nservice = \"api\"\nauth = \"public\"\n\
             [[route]]\nprefix = \"/app/live\"\nservice = \"live\"\nauth = \"public\"\n\
             [[files]]\nprefix = \"/\"\ndir = {:?}\n\
             [[files]]\nprefix = \"/app\"\ndir = {:?}\n",
            dir.path(),
            dir.path()
        );
        let manifest = tessera_manifest::Manifest::parse(&text).unwrap();
        let table =
            crate::routes::RouteTable::from_manifest(&manifest, None, Path::new("")).unwrap();
        let at = |path: &str| {
            let route = table.find(path).unwrap();
            match table.mount(path, route) {
                Some(m) => format!("files {}", m.label),
                None => format!("route {}", route.map_or("-", |r| r.service.as_str())),
            }
        };
        assert_eq!(at("/api/x"), "route api");
        assert_eq!(at("/app/live/feed"), "route live");
        assert_eq!(at("/app/app.js"), "files /app");
        assert_eq!(at("/index.html"), "files /");
        assert_eq!(at("/"), "files /");
        assert_eq!(table.status()["files"].as_array().unwrap().len(), 2);
        // A directory that cannot be read fails the table (a reload is refused with it).
        let missing = text.replace(&format!("{:?}", dir.path()), "\"/nonexistent-dir\"");
        let manifest = tessera_manifest::Manifest::parse(&missing).unwrap();
        assert!(crate::routes::RouteTable::from_manifest(&manifest, None, Path::new("")).is_err());
    }

    #[test]
    fn a_mount_too_large_is_refused() {
        let dir = TempDir::new();
        let big = std::fs::File::create(dir.path().join("big.bin")).unwrap();
        big.set_len(MAX_BYTES + 1).unwrap();
        let spec = FilesRoute {
            prefix: "/".into(),
            dir: dir.path().into(),
            index: "index.html".into(),
            max_age_secs: 1,
        };
        let err = Mount::load(&spec, Path::new("/")).err().unwrap();
        assert!(err.contains("64 MiB"), "{err}");
        let spec = FilesRoute {
            dir: dir.path().join("missing"),
            ..spec
        };
        assert!(Mount::load(&spec, Path::new("/")).is_err());
    }
}
