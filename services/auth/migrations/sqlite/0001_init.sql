CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,          -- comma-separated
    created_at    INTEGER NOT NULL
);

-- Ed25519 signing keys; the newest unretired one signs, all unretired ones are in the JWKS.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_der BLOB NOT NULL,            -- PKCS#8
    public_x    TEXT NOT NULL,            -- base64url of the public key
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

-- A login session: the family of refresh tokens it rotates through, and the sid of its
-- access tokens.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Refresh tokens are opaque; only their SHA-256 is kept.
CREATE TABLE refresh_tokens (
    hash       TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);

-- The revocation feed the gateways follow.
CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
