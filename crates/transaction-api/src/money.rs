//! Exact money: decimal amounts parsed without floating point, checked against ISO 4217 minor units.

use std::str::FromStr;

use iso_currency::Currency;
use rust_decimal::Decimal;

/// A validated amount in a currency, never more precise than the currency allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

/// Why an amount or currency was refused; the text is shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a decimal number such as 100.50, given as a JSON number or string")]
    NotADecimal,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not exceed {0}")]
    TooLarge(String),
    #[error("{currency} allows at most {minor_units} decimal places")]
    TooPrecise { currency: String, minor_units: u16 },
    #[error("must be an ISO 4217 currency code such as EUR, MXN or BRL")]
    UnknownCurrency,
}

/// Parses an ISO 4217 code (upper case) of a currency that has minor units.
pub fn parse_currency(code: &str) -> Result<Currency, MoneyError> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(MoneyError::UnknownCurrency);
    }
    let currency = Currency::from_code(code).ok_or(MoneyError::UnknownCurrency)?;
    // Precious metals, testing and "no currency" codes have no minor units and are not money here.
    currency.exponent().ok_or(MoneyError::UnknownCurrency)?;
    Ok(currency)
}

/// Minor units (decimal places) of a currency: JPY 0, EUR 2, KWD 3.
pub fn minor_units(currency: Currency) -> u16 {
    currency.exponent().unwrap_or(0)
}

/// Parses the exact decimal text of an amount: plain (`100.50`) or, as JSON allows, with an
/// exponent (`1.005e2`). No binary floating point is involved at any step.
pub fn parse_decimal(text: &str) -> Result<Decimal, MoneyError> {
    let text = text.trim();
    let plain = text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    let well_formed = !text.is_empty() && text.len() <= 64 && !text.starts_with('+');
    if !well_formed {
        return Err(MoneyError::NotADecimal);
    }
    let parsed = if plain { Decimal::from_str_exact(text) } else { Decimal::from_scientific(text) };
    let value = parsed.map_err(|_| MoneyError::NotADecimal)?;
    if plain && (text.starts_with('.') || text.ends_with('.') || text.contains("-.")) {
        return Err(MoneyError::NotADecimal);
    }
    Ok(value)
}

/// Checks what needs no currency: the amount is positive and at most `max`.
pub fn check_range(amount: Decimal, max: Decimal) -> Result<(), MoneyError> {
    if amount <= Decimal::ZERO {
        return Err(MoneyError::NotPositive);
    }
    if amount > max {
        return Err(MoneyError::TooLarge(max.normalize().to_string()));
    }
    Ok(())
}

impl Money {
    /// Validates `amount` in `currency`: positive, at most `max`, at most the minor units.
    pub fn new(amount: Decimal, currency: Currency, max: Decimal) -> Result<Self, MoneyError> {
        check_range(amount, max)?;
        let units = minor_units(currency);
        if amount.normalize().scale() > u32::from(units) {
            return Err(MoneyError::TooPrecise { currency: currency.code().to_owned(), minor_units: units });
        }
        let mut amount = amount;
        amount.rescale(u32::from(units));
        Ok(Self { amount, currency })
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Canonical text: exactly the currency's minor units (`100.50`, `1000`, `1.250`).
    pub fn amount_text(&self) -> String {
        format_amount(self.amount, self.currency)
    }
}

/// Formats an amount with exactly the currency's number of decimal places.
pub fn format_amount(amount: Decimal, currency: Currency) -> String {
    let mut value = amount;
    value.rescale(u32::from(minor_units(currency)));
    value.to_string()
}

impl FromStr for Money {
    type Err = MoneyError;

    /// `"100.50 BRL"`, for tests and tools.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (amount, code) = s.split_once(' ').ok_or(MoneyError::NotADecimal)?;
        Self::new(parse_decimal(amount)?, parse_currency(code)?, Decimal::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn max() -> Decimal {
        Decimal::from(1_000_000_000)
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        for (code, units) in [("JPY", 0), ("BRL", 2), ("EUR", 2), ("MXN", 2), ("KWD", 3), ("CLP", 0)] {
            assert_eq!(minor_units(parse_currency(code).expect(code)), units, "{code}");
        }
    }

    #[test]
    fn unknown_lowercase_and_non_money_codes_are_rejected() {
        for code in ["XYZ", "brl", "EU", "EURO", "XAU", "XXX", ""] {
            assert_eq!(parse_currency(code), Err(MoneyError::UnknownCurrency), "{code}");
        }
    }

    #[test]
    fn amounts_respect_precision_sign_and_maximum() {
        let brl = parse_currency("BRL").expect("BRL");
        let jpy = parse_currency("JPY").expect("JPY");
        let kwd = parse_currency("KWD").expect("KWD");
        let ok = |text: &str, c| Money::new(parse_decimal(text).expect(text), c, max());
        assert_eq!(ok("100.50", brl).map(|m| m.amount_text()), Ok("100.50".to_owned()));
        assert_eq!(ok("100.5", brl).map(|m| m.amount_text()), Ok("100.50".to_owned()));
        assert_eq!(
            ok("100.500", brl).map(|m| m.amount_text()),
            Ok("100.50".to_owned()),
            "trailing zeros are not precision"
        );
        assert!(matches!(ok("100.505", brl), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(ok("1.5", jpy), Err(MoneyError::TooPrecise { .. })));
        assert_eq!(ok("1.250", kwd).map(|m| m.amount_text()), Ok("1.250".to_owned()));
        assert_eq!(ok("0", brl), Err(MoneyError::NotPositive));
        assert_eq!(ok("-1", brl), Err(MoneyError::NotPositive));
        assert!(matches!(ok("1000000000.01", brl), Err(MoneyError::TooLarge(_))));
        assert_eq!(ok("1.005e2", brl).map(|m| m.amount_text()), Ok("100.50".to_owned()));
    }

    #[test]
    fn malformed_text_is_not_a_decimal() {
        for text in ["", "abc", "1.2.3", ".5", "5.", "+5", "1,50", "NaN", "Infinity", "0x10", "1e", "--1"] {
            assert_eq!(parse_decimal(text), Err(MoneyError::NotADecimal), "{text:?}");
        }
    }

    proptest! {
        /// Any amount with at most the currency's minor units formats and parses back unchanged.
        #[test]
        fn format_then_parse_round_trips(minor in 1i64..1_000_000_000_000, code in prop::sample::select(vec!["JPY", "BRL", "EUR", "MXN", "KWD"])) {
            let currency = parse_currency(code).expect("known");
            let units = u32::from(minor_units(currency));
            let amount = Decimal::new(minor, units);
            prop_assume!(amount <= max());
            let money = Money::new(amount, currency, max()).expect("valid");
            let text = money.amount_text();
            prop_assert_eq!(text.split('.').nth(1).map_or(0, str::len), units as usize);
            let reparsed = Money::new(parse_decimal(&text).expect("parses"), currency, max()).expect("valid");
            prop_assert_eq!(reparsed, money);
            prop_assert_eq!(reparsed.amount(), amount);
        }

        /// One digit more than the currency allows (non-zero) is always refused.
        #[test]
        fn excess_precision_is_refused(minor in 1i64..1_000_000_000, extra in 1i64..10, code in prop::sample::select(vec!["JPY", "BRL", "KWD"])) {
            let currency = parse_currency(code).expect("known");
            let units = u32::from(minor_units(currency));
            let amount = Decimal::new(minor * 10 + extra, units + 1);
            let refused = matches!(Money::new(amount, currency, Decimal::MAX), Err(MoneyError::TooPrecise { .. }));
            prop_assert!(refused, "{} {} accepted", amount, code);
        }

        /// Decimal text from integers and fractions is parsed exactly (no float rounding).
        #[test]
        fn decimal_text_parses_exactly(int in 0u64..10_000_000_000, frac in 0u32..1000) {
            let text = format!("{int}.{frac:03}");
            let parsed = parse_decimal(&text).expect("valid");
            prop_assert_eq!(parsed.to_string(), text);
        }
    }
}
