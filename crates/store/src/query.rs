//! The query API services write against: [`query`], [`query_as`] and [`query_scalar`], with
//! `$1`-style parameters, run on the pool (each statement its own transaction) or on a
//! transaction, whatever the backend behind them.

use std::marker::PhantomData;

use crate::value::Scalar;
use crate::{Conn, DbError, Decode, Encode, FromRow, Pool, Reader, Value};

/// A statement whose rows are not read: `execute` it.
pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

/// A statement whose rows are read as tuples `T`.
pub fn query_as<T: FromRow>(sql: &str) -> QueryAs<'_, T> {
    QueryAs {
        query: query(sql),
        row: PhantomData,
    }
}

/// A statement whose rows are read as their first column `T`.
pub fn query_scalar<T: Decode>(sql: &str) -> QueryScalar<'_, T> {
    QueryScalar {
        query: query(sql),
        row: PhantomData,
    }
}

/// Where a statement runs: the pool or a transaction's connection.
pub trait Executor<'c>: Send {
    #[doc(hidden)]
    fn target(self) -> Target<'c>;
}

#[doc(hidden)]
pub enum Target<'c> {
    Pool(&'c Pool),
    Conn(&'c mut Conn),
    Read(&'c Reader),
}

impl<'c> Executor<'c> for &'c Pool {
    fn target(self) -> Target<'c> {
        Target::Pool(self)
    }
}

impl<'c> Executor<'c> for &'c Reader {
    fn target(self) -> Target<'c> {
        Target::Read(self)
    }
}

impl<'c> Executor<'c> for &'c mut Conn {
    fn target(self) -> Target<'c> {
        Target::Conn(self)
    }
}

impl Target<'_> {
    async fn execute(self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        match self {
            Target::Pool(pool) => pool.execute(sql, args).await,
            Target::Conn(conn) => {
                conn.1.count(sql);
                conn.execute(sql, args).await
            }
            Target::Read(reader) => reader.execute(sql, args).await,
        }
    }

    async fn rows<T: FromRow>(
        self,
        sql: &str,
        args: &[Value<'_>],
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        match self {
            Target::Pool(pool) => pool.rows(sql, args, limit).await,
            Target::Conn(conn) => {
                conn.1.count(sql);
                conn.rows(sql, args, limit).await
            }
            Target::Read(reader) => reader.rows(sql, args, limit).await,
        }
    }
}

#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query<'q> {
    sql: &'q str,
    args: Vec<Value<'q>>,
}

/// What a statement that is not a query did.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    rows_affected: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

impl<'q> Query<'q> {
    /// Binds the next parameter (`$1`, then `$2`, …).
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.args.push(value.encode());
        self
    }

    pub async fn execute<'c>(self, on: impl Executor<'c>) -> Result<Done, DbError> {
        let rows_affected = on.target().execute(self.sql, &self.args).await?;
        Ok(Done { rows_affected })
    }

    async fn rows<'c, T: FromRow>(
        self,
        on: impl Executor<'c>,
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        on.target().rows(self.sql, &self.args, limit).await
    }
}

#[must_use = "a query does nothing until it is fetched"]
pub struct QueryAs<'q, T> {
    query: Query<'q>,
    row: PhantomData<fn() -> T>,
}

impl<'q, T: FromRow> QueryAs<'q, T> {
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub async fn fetch_all<'c>(self, on: impl Executor<'c>) -> Result<Vec<T>, DbError> {
        self.query.rows(on, usize::MAX).await
    }

    pub async fn fetch_optional<'c>(self, on: impl Executor<'c>) -> Result<Option<T>, DbError> {
        Ok(self.query.rows(on, 1).await?.pop())
    }

    pub async fn fetch_one<'c>(self, on: impl Executor<'c>) -> Result<T, DbError> {
        self.fetch_optional(on).await?.ok_or(DbError::RowNotFound)
    }
}

#[must_use = "a query does nothing until it is fetched"]
pub struct QueryScalar<'q, T> {
    query: Query<'q>,
    row: PhantomData<fn() -> T>,
}

impl<'q, T: Decode> QueryScalar<'q, T> {
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub async fn fetch_all<'c>(self, on: impl Executor<'c>) -> Result<Vec<T>, DbError> {
        let rows: Vec<Scalar<T>> = self.query.rows(on, usize::MAX).await?;
        Ok(rows.into_iter().map(|Scalar(v)| v).collect())
    }

    pub async fn fetch_optional<'c>(self, on: impl Executor<'c>) -> Result<Option<T>, DbError> {
        let rows: Vec<Scalar<T>> = self.query.rows(on, 1).await?;
        Ok(rows.into_iter().next().map(|Scalar(v)| v))
    }

    pub async fn fetch_one<'c>(self, on: impl Executor<'c>) -> Result<T, DbError> {
        self.fetch_optional(on).await?.ok_or(DbError::RowNotFound)
    }
}
