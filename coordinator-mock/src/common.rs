//! What every module of the coordinator uses: the one way to build an
//! outgoing message, the conversions between protocol integers and their
//! Postgres columns, and the TEXT-backed enums of status columns.

use prost::Message as _;
use proto::processor_v1::{CoordinatorMessage, coordinator_message::Kind};

use link::OutMessage;

/// A coordinator message ready for `link::enqueue`: `uid` makes it
/// exactly-once on its link, `kind` names it in the send log.
pub fn out(uid: String, kind: &'static str, message: Kind) -> OutMessage {
    OutMessage {
        uid,
        kind,
        payload: CoordinatorMessage {
            kind: Some(message),
        }
        .encode_to_vec(),
    }
}

/// A protocol `u64` as a BIGINT, saturating: every stored value came from
/// an `i64` or is checked against one before it counts.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A BIGINT as a protocol `u64`; the columns read this way are never
/// negative (CHECK or written from a `u64`), 0 otherwise.
pub fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A protocol `u32` as an INTEGER, saturating.
pub fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// An INTEGER as a protocol `u32`; 0 for a negative value.
pub fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A value a status column may not hold: the column's CHECK constraint and
/// its Rust enum disagree, or the row was written by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {type_name} (one of: {})", .expected.join(", "))]
pub struct UnknownValue {
    /// The Rust enum.
    pub type_name: &'static str,
    /// What was found.
    pub value: String,
    /// The values it may hold.
    pub expected: &'static [&'static str],
}

/// Declares the Rust enum of a TEXT status column: one variant per value
/// its CHECK constraint allows, `as_str`/`FromStr`/`Display`, and sqlx
/// encoding and decoding as TEXT. A value outside the enum decodes to an
/// error (which `try_get`/`FromRow` report with the column's name), never a
/// panic.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// The column value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $value, )+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::common::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $value => Ok(Self::$variant), )+
                    other => Err($crate::common::UnknownValue {
                        type_name: stringify!($name),
                        value: other.to_owned(),
                        expected: &[$( $value ),+],
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<Self>()?)
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    text_enum! {
        /// A test column.
        enum Colour {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn a_text_enum_round_trips_and_names_what_it_refuses() {
        for c in [Colour::Red, Colour::DarkBlue] {
            assert_eq!(c.as_str().parse::<Colour>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        let err = "green".parse::<Colour>().expect_err("not a colour");
        assert_eq!(
            err.to_string(),
            "\"green\" is not a Colour (one of: red, dark_blue)"
        );
    }
}
