//! The values that cross the seam between the query API and a backend: parameters going in
//! ([`Value`], made by [`Encode`]) and columns coming out ([`ValueRef`], read by [`Decode`]),
//! in the portable types every backend has (integers, reals, text, bytes, null).
//!
//! A service's code names only these, never a driver's types, so the same statements run on
//! every backend behind [`crate::Db`].

use std::borrow::Cow;

use crate::DbError;

/// A value bound to a parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

/// A column's value as a backend hands it over, borrowed from its row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Int(_) => "an integer",
            ValueRef::Real(_) => "a real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "a blob",
        }
    }
}

/// What can be bound to a parameter.
pub trait Encode<'a> {
    fn encode(self) -> Value<'a>;
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl<'a> Encode<'a> for $t {
            fn encode(self) -> Value<'a> {
                Value::Int(self as i64)
            }
        }
        impl<'a> Encode<'a> for &$t {
            fn encode(self) -> Value<'a> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
encode_int!(i64, i32, i16, i8, u32, u16, u8);

impl<'a> Encode<'a> for bool {
    fn encode(self) -> Value<'a> {
        Value::Int(self as i64)
    }
}

impl<'a> Encode<'a> for f64 {
    fn encode(self) -> Value<'a> {
        Value::Real(self)
    }
}

impl<'a> Encode<'a> for String {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Owned(self))
    }
}

impl<'a> Encode<'a> for &'a String {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for &'a str {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for &&'a str {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for Vec<u8> {
    fn encode(self) -> Value<'a> {
        Value::Blob(Cow::Owned(self))
    }
}

impl<'a> Encode<'a> for &'a [u8] {
    fn encode(self) -> Value<'a> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for &'a Vec<u8> {
    fn encode(self) -> Value<'a> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<'a, T: Encode<'a>> Encode<'a> for Option<T> {
    fn encode(self) -> Value<'a> {
        self.map_or(Value::Null, Encode::encode)
    }
}

impl<'a> Encode<'a> for &'a Option<String> {
    fn encode(self) -> Value<'a> {
        self.as_deref().map_or(Value::Null, Encode::encode)
    }
}

/// What a column can be read as.
pub trait Decode: Sized {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError>;
}

fn mismatch(value: ValueRef<'_>, wanted: &str) -> DbError {
    DbError::Decode(format!("expected {wanted}, found {}", value.kind()))
}

impl Decode for i64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
        match value {
            ValueRef::Int(i) => Ok(i),
            v => Err(mismatch(v, "an integer")),
        }
    }
}

macro_rules! decode_int {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
                let i = i64::decode(value)?;
                <$t>::try_from(i).map_err(|_| {
                    DbError::Decode(format!("{i} is out of range for {}", stringify!($t)))
                })
            }
        }
    )*};
}
decode_int!(i32, i16, i8, u64, u32, u16, u8, usize);

impl Decode for bool {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
        Ok(i64::decode(value)? != 0)
    }
}

impl Decode for f64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
        match value {
            ValueRef::Real(r) => Ok(r),
            ValueRef::Int(i) => Ok(i as f64),
            v => Err(mismatch(v, "a real")),
        }
    }
}

impl Decode for String {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
        match value {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(DbError::decode),
            v => Err(mismatch(v, "text")),
        }
    }
}

impl Decode for Vec<u8> {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
        match value {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            v => Err(mismatch(v, "a blob")),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(value: ValueRef<'_>) -> Result<Self, DbError> {
        match value {
            ValueRef::Null => Ok(None),
            v => T::decode(v).map(Some),
        }
    }
}

/// One row of a result, as a backend hands it over.
pub trait Row {
    /// The value of column `index` (from 0).
    fn value(&self, index: usize) -> Result<ValueRef<'_>, DbError>;

    /// Column `index` read as `T`.
    fn get<T: Decode>(&self, index: usize) -> Result<T, DbError> {
        let value = self.value(index)?;
        T::decode(value).map_err(|e| DbError::Decode(format!("column {index}: {e}")))
    }
}

/// A row read as a tuple of columns.
pub trait FromRow: Sized {
    fn from_row<R: Row + ?Sized>(row: &R) -> Result<Self, DbError>;
}

macro_rules! tuple_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Decode),+> FromRow for ($($t,)+) {
            fn from_row<R: Row + ?Sized>(row: &R) -> Result<Self, DbError> {
                Ok(($(row.get::<$t>($i)?,)+))
            }
        }
    };
}
tuple_row!(A 0);
tuple_row!(A 0, B 1);
tuple_row!(A 0, B 1, C 2);
tuple_row!(A 0, B 1, C 2, D 3);
tuple_row!(A 0, B 1, C 2, D 3, E 4);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// A row read as its first column.
pub(crate) struct Scalar<T>(pub T);

impl<T: Decode> FromRow for Scalar<T> {
    fn from_row<R: Row + ?Sized>(row: &R) -> Result<Self, DbError> {
        row.get(0).map(Scalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Columns<'a>(Vec<ValueRef<'a>>);

    impl Row for Columns<'_> {
        fn value(&self, index: usize) -> Result<ValueRef<'_>, DbError> {
            self.0
                .get(index)
                .copied()
                .ok_or_else(|| DbError::Decode(format!("no column {index}")))
        }
    }

    #[test]
    fn columns_decode_as_the_portable_types() {
        let row = Columns(vec![
            ValueRef::Int(7),
            ValueRef::Text(b"seven"),
            ValueRef::Null,
            ValueRef::Int(1),
            ValueRef::Int(3),
            ValueRef::Blob(&[1, 2]),
        ]);
        let got = <(i64, String, Option<String>, bool, f64, Vec<u8>)>::from_row(&row).unwrap();
        assert_eq!(got, (7, "seven".into(), None, true, 3.0, vec![1, 2]));
        assert_eq!(
            <(u8,)>::from_row(&Columns(vec![ValueRef::Int(255)])).unwrap(),
            (255,)
        );
    }

    #[test]
    fn a_column_of_the_wrong_kind_names_the_column() {
        let row = Columns(vec![ValueRef::Int(1), ValueRef::Text(b"x")]);
        let err = <(i64, i64)>::from_row(&row).unwrap_err().to_string();
        assert!(err.contains("column 1") && err.contains("integer"), "{err}");
        let err = <(u8,)>::from_row(&Columns(vec![ValueRef::Int(256)])).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(<(String,)>::from_row(&Columns(vec![ValueRef::Text(&[0xff])])).is_err());
    }
}
