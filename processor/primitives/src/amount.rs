//! Monero amounts in atomic units (piconero), with checked arithmetic.
//!
//! Every place that adds amounts goes through [`Amount`], so a sum that does
//! not fit 64 bits is an error naming that sum, never a wrapped value (the
//! release profile also has `overflow-checks = true`, as a second net).

use std::fmt;

/// Piconero in one XMR.
pub const PICONERO_PER_XMR: u64 = 1_000_000_000_000;

/// The largest amount the processors and the coordinator store (Postgres
/// `BIGINT`): `i64::MAX` piconero, about 9.2 million XMR.
pub const MAX_BURN: u64 = i64::MAX as u64;

/// An amount of Monero in atomic units (piconero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

/// Why an amount was refused or a sum could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// A sum does not fit 64 bits.
    #[error(
        "{what} overflows: it is above {} piconero, the most 64 bits hold; \
         this is a bug or corrupted data, not a balance Monero can have",
        u64::MAX
    )]
    Overflow {
        /// Which sum (e.g. "the spendable balance").
        what: String,
    },
    /// A subtraction would go below zero.
    #[error("{what} would be negative ({left} piconero minus {right} piconero)")]
    Underflow {
        /// Which difference.
        what: String,
        /// Minuend.
        left: u64,
        /// Subtrahend.
        right: u64,
    },
    /// A burn of nothing.
    #[error("amount 0 is not a payable burn: give an amount of at least 1 piconero")]
    ZeroBurn,
    /// A burn above what can be stored.
    #[error(
        "amount {amount} piconero ({}) is above the largest burn the processors accept, \
         {MAX_BURN} piconero ({}; Postgres BIGINT): give a smaller amount, or split it into \
         several burns",
        Amount(*amount),
        Amount(MAX_BURN)
    )]
    BurnTooLarge {
        /// The amount asked for.
        amount: u64,
    },
}

impl Amount {
    /// Nothing.
    pub const ZERO: Self = Self(0);

    /// An amount of `piconero` atomic units.
    pub const fn from_piconero(piconero: u64) -> Self {
        Self(piconero)
    }

    /// The amount in atomic units.
    pub const fn piconero(self) -> u64 {
        self.0
    }

    /// A burn's amount as a caller gave it: at least 1 piconero and at most
    /// [`MAX_BURN`] (what Postgres `BIGINT` holds), refused otherwise, never
    /// clamped.
    pub fn for_burn(piconero: u64) -> Result<Self, AmountError> {
        match piconero {
            0 => Err(AmountError::ZeroBurn),
            p if p > MAX_BURN => Err(AmountError::BurnTooLarge { amount: p }),
            p => Ok(Self(p)),
        }
    }

    /// `self + other`, or `None` if it does not fit 64 bits.
    #[must_use]
    pub const fn checked_add(self, other: Self) -> Option<Self> {
        match self.0.checked_add(other.0) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self - other`, or `None` if it would be negative.
    #[must_use]
    pub const fn checked_sub(self, other: Self) -> Option<Self> {
        match self.0.checked_sub(other.0) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self + other`, or an error naming `what` overflowed.
    pub fn add(self, other: Self, what: &str) -> Result<Self, AmountError> {
        self.checked_add(other)
            .ok_or_else(|| AmountError::Overflow {
                what: what.to_owned(),
            })
    }

    /// `self - other`, or an error naming `what` went below zero.
    pub fn sub(self, other: Self, what: &str) -> Result<Self, AmountError> {
        self.checked_sub(other)
            .ok_or_else(|| AmountError::Underflow {
                what: what.to_owned(),
                left: self.0,
                right: other.0,
            })
    }

    /// The sum of `amounts`, or an error naming `what` overflowed.
    pub fn sum<I>(what: &str, amounts: I) -> Result<Self, AmountError>
    where
        I: IntoIterator,
        I::Item: Into<Self>,
    {
        amounts
            .into_iter()
            .try_fold(Self::ZERO, |total, a| total.checked_add(a.into()))
            .ok_or_else(|| AmountError::Overflow {
                what: what.to_owned(),
            })
    }
}

impl From<u64> for Amount {
    fn from(piconero: u64) -> Self {
        Self(piconero)
    }
}

impl From<Amount> for u64 {
    fn from(amount: Amount) -> Self {
        amount.0
    }
}

impl fmt::Display for Amount {
    /// As XMR with all 12 decimals: `1.250000000000 XMR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:012} XMR",
            self.0 / PICONERO_PER_XMR,
            self.0 % PICONERO_PER_XMR
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_checked_and_name_what_overflowed() {
        assert_eq!(
            Amount::sum("three", [1u64, 2, 3]),
            Ok(Amount::from_piconero(6))
        );
        assert_eq!(Amount::sum("nothing", Vec::<u64>::new()), Ok(Amount::ZERO));
        let err = Amount::sum("the spendable balance", [u64::MAX, 1]).unwrap_err();
        assert_eq!(
            err,
            AmountError::Overflow {
                what: "the spendable balance".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("the spendable balance overflows")
        );
        // Exactly u64::MAX still fits.
        assert_eq!(
            Amount::sum("edge", [u64::MAX - 1, 1]),
            Ok(Amount::from_piconero(u64::MAX))
        );
    }

    #[test]
    fn add_and_sub_are_checked() {
        let max = Amount::from_piconero(u64::MAX);
        let one = Amount::from_piconero(1);
        assert_eq!(max.checked_add(one), None);
        assert_eq!(Amount::ZERO.checked_sub(one), None);
        assert_eq!(one.checked_sub(one), Some(Amount::ZERO));
        assert!(max.add(one, "fee plus payments").is_err());
        let err = Amount::ZERO.sub(one, "change").unwrap_err();
        assert!(
            err.to_string().contains("change would be negative"),
            "{err}"
        );
        assert_eq!(one.add(one, "two"), Ok(Amount::from_piconero(2)));
    }

    #[test]
    fn burns_are_bounded_not_clamped() {
        let zero = Amount::for_burn(0).unwrap_err();
        assert_eq!(zero, AmountError::ZeroBurn);
        assert!(zero.to_string().contains("at least 1 piconero"), "{zero}");
        assert_eq!(Amount::for_burn(1), Ok(Amount::from_piconero(1)));
        assert_eq!(
            Amount::for_burn(MAX_BURN),
            Ok(Amount::from_piconero(9_223_372_036_854_775_807))
        );
        for too_much in [MAX_BURN + 1, u64::MAX] {
            let err = Amount::for_burn(too_much).unwrap_err();
            assert_eq!(err, AmountError::BurnTooLarge { amount: too_much });
            let text = err.to_string();
            assert!(
                text.contains(&too_much.to_string())
                    && text.contains("9223372036854775807")
                    && text.contains("split it"),
                "{text}"
            );
        }
    }

    #[test]
    fn displays_as_xmr_with_twelve_decimals() {
        assert_eq!(Amount::ZERO.to_string(), "0.000000000000 XMR");
        assert_eq!(
            Amount::from_piconero(1_250_000_000_000).to_string(),
            "1.250000000000 XMR"
        );
        assert_eq!(Amount::from_piconero(1).to_string(), "0.000000000001 XMR");
        assert_eq!(
            Amount::from_piconero(MAX_BURN).to_string(),
            "9223372.036854775807 XMR"
        );
    }
}
