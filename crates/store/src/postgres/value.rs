//! The portable values on PostgreSQL's wire: a [`Value`] is written as whatever type the
//! server gave its parameter, and a column is read as the [`ValueRef`] of its type, borrowed
//! from the row.

use std::error::Error;

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::{DbError, Row, Value, ValueRef};

type Failure = Box<dyn Error + Sync + Send>;

/// `args` as the driver's parameters, checked against the `expected` count.
pub(super) fn params<'a>(
    args: &'a [Value<'_>],
    expected: usize,
) -> Result<Vec<&'a (dyn ToSql + Sync)>, DbError> {
    if args.len() < expected {
        return Err(DbError::Bind(format!(
            "${} is not bound ({} given)",
            args.len() + 1,
            args.len()
        )));
    }
    Ok(args[..expected]
        .iter()
        .map(|a| a as &(dyn ToSql + Sync))
        .collect())
}

impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Failure> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a parameter of type {ty}").into()),
            },
            Value::Real(r) => match *ty {
                Type::FLOAT8 => r.to_sql(ty, out),
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                _ => Err(format!("a real cannot be bound to a parameter of type {ty}").into()),
            },
            Value::Text(t) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    t.as_ref().to_sql(ty, out)
                }
                Type::JSON => {
                    out.extend_from_slice(t.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(t.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(format!("text cannot be bound to a parameter of type {ty}").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_ref().to_sql(ty, out),
                _ => Err(format!("bytes cannot be bound to a parameter of type {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column read as a portable value.
struct Column<'a>(ValueRef<'a>);

impl<'a> FromSql<'a> for Column<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Failure> {
        Ok(Column(match *ty {
            Type::INT8 => ValueRef::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => ValueRef::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => ValueRef::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => ValueRef::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => ValueRef::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => ValueRef::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(f32::from_sql(ty, raw)?.into()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN => {
                ValueRef::Text(raw)
            }
            Type::JSONB => match raw.split_first() {
                Some((1, json)) => ValueRef::Text(json),
                _ => return Err("jsonb in an unknown format".into()),
            },
            Type::BYTEA => ValueRef::Blob(raw),
            _ => {
                return Err(format!(
                    "a column of type {ty} has no portable reading (cast it to bigint, \
                     double precision or text)"
                )
                .into());
            }
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Failure> {
        Ok(Column(ValueRef::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Row for tokio_postgres::Row {
    fn value(&self, index: usize) -> Result<ValueRef<'_>, DbError> {
        self.try_get::<_, Column<'_>>(index)
            .map(|c| c.0)
            .map_err(|e| DbError::Decode(format!("column {index}: {}", source_of(&e))))
    }
}

/// The innermost message of a driver error (its own text is only "error deserializing
/// column 0").
fn source_of(e: &tokio_postgres::Error) -> String {
    e.source().map_or_else(|| e.to_string(), |s| s.to_string())
}
