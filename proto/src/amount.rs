//! Money on the wire and on screen: integer minor units (cents) as `u64`,
//! typed and printed as decimals with two places (`12.50`). Never floats.

/// The largest amount accepted anywhere: 10^13 cents (100 billion).
pub const MAX_AMOUNT: u64 = 10_000_000_000_000;

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a decimal number with at most two places.
    #[error("{0:?} is not an amount; write it like 12.50 (at most two decimal places)")]
    Malformed(String),
    /// Zero where money must move.
    #[error("the amount must be more than 0.00")]
    Zero,
    /// Above [`MAX_AMOUNT`].
    #[error("{0:?} is too large; the most is 100000000000.00")]
    TooLarge(String),
}

/// Parses `12`, `12.5` or `12.50` into cents. Refuses signs, more than two
/// decimals, exponents, spaces inside, and anything above [`MAX_AMOUNT`].
///
/// # Errors
/// An [`AmountError`] saying what is wrong.
pub fn parse_amount(text: &str) -> Result<u64, AmountError> {
    let t = text.trim();
    let malformed = || AmountError::Malformed(text.to_owned());
    let (whole, frac) = match t.split_once('.') {
        Some((w, f)) => (w, f),
        None => (t, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    if frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (t.contains('.') && frac.is_empty())
    {
        return Err(malformed());
    }
    if whole.len() > 12 {
        return Err(AmountError::TooLarge(text.to_owned()));
    }
    let whole: u64 = whole.parse().map_err(|_| malformed())?;
    let cents: u64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>().map_err(|_| malformed())? * 10,
        _ => frac.parse().map_err(|_| malformed())?,
    };
    let total = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(|| AmountError::TooLarge(text.to_owned()))?;
    if total > MAX_AMOUNT {
        return Err(AmountError::TooLarge(text.to_owned()));
    }
    Ok(total)
}

/// Like [`parse_amount`], refusing zero.
///
/// # Errors
/// As [`parse_amount`], plus [`AmountError::Zero`].
pub fn parse_positive_amount(text: &str) -> Result<u64, AmountError> {
    match parse_amount(text)? {
        0 => Err(AmountError::Zero),
        n => Ok(n),
    }
}

/// Formats cents as `12.50`.
#[must_use]
pub fn format_amount(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Formats a signed amount (a balance that may be negative, such as the
/// external account's) as `-12.50`.
#[must_use]
pub fn format_signed(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}", format_amount(cents.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_amount("12.50"), Ok(1250));
        assert_eq!(parse_amount("12.5"), Ok(1250));
        assert_eq!(parse_amount("12"), Ok(1200));
        assert_eq!(parse_amount("0.01"), Ok(1));
        assert_eq!(parse_amount("0"), Ok(0));
        assert_eq!(format_amount(1250), "12.50");
        assert_eq!(format_amount(1), "0.01");
        assert_eq!(format_signed(-1250), "-12.50");
        assert_eq!(parse_amount(&format_amount(12_345)), Ok(12_345));
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for bad in [
            "-1", "+1", "1.234", "1e3", "abc", "", ".5", "5.", "1,50", "1 0", "NaN",
        ] {
            assert!(
                matches!(parse_amount(bad), Err(AmountError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_amount("100000000000.01"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            parse_amount("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
        assert_eq!(parse_positive_amount("0.00"), Err(AmountError::Zero));
    }
}
