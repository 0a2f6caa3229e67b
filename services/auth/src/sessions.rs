//! Sessions end by logout or by the reuse of a refresh token. Revoking one marks it and
//! records a revocation, which gateways read from the feed (`/internal/revocations`) and then
//! reject the session's access tokens.

use tessera::unix_now;

/// Revokes a session inside `tx`; returns the revocation's seq. The revocation is kept as
/// long as an access token of the session may live (`access_ttl`).
pub async fn revoke(
    tx: &mut tessera::store::Tx,
    session: &str,
    access_ttl: u64,
) -> Result<i64, tessera::store::DbError> {
    let now = unix_now();
    tessera::store::query(
        "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(now as i64)
    .bind(session)
    .execute(&mut **tx)
    .await?;
    let (seq,): (i64,) = tessera::store::query_as(
        "INSERT INTO revocations (session_id, expires_at) VALUES ($1, $2) RETURNING seq",
    )
    .bind(session)
    .bind((now + access_ttl) as i64)
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq)
}
