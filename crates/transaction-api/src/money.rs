//! Exact money: an amount is taken exactly as written or refused (never rounded, never
//! reinterpreted), in an ISO 4217 currency, and never finer than the currency's minor units.
//!
//! The accepted text is the JSON number grammar (RFC 8259 §6), whether it arrives as a JSON number
//! or inside a JSON string: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, at most
//! [`AMOUNT_PRECISION`] digits before the exponent. The value it denotes must then be exactly
//! representable at the currency's minor units: `1.5e1` and `15.000` are 15.00 BRL, `1.234e0` and
//! `100.505` BRL are refused. See docs/adr/0003-exact-decimal-money.md.

use std::str::FromStr;
use std::sync::Arc;

use iso_currency::{Currency, Flag};
use rust_decimal::Decimal;

use crate::{AMOUNT_PRECISION, AMOUNT_SCALE};

/// Digits before the decimal point that the amount column holds (20 for `numeric(24, 4)`).
const AMOUNT_INTEGER_DIGITS: i64 = (AMOUNT_PRECISION - AMOUNT_SCALE) as i64;

/// The largest value the amount column holds: 99999999999999999999.9999 for `numeric(24, 4)`.
pub fn column_max() -> Decimal {
    Decimal::from_i128_with_scale(10i128.pow(AMOUNT_PRECISION) - 1, AMOUNT_SCALE)
}

/// A validated amount in a currency, never more precise than the currency allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

/// Why an amount or currency was refused; the text is shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "must be a decimal number such as 100.50, as a JSON number or a string holding one \
         (no `+`, `_`, spaces, leading zeros, NaN or Infinity)"
    )]
    NotADecimal,
    #[error("must have at most {0} digits")]
    TooManyDigits(u32),
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not exceed {0}")]
    TooLarge(String),
    #[error("{currency} allows at most {minor_units} decimal places; amounts are never rounded")]
    TooPrecise { currency: String, minor_units: u16 },
    #[error("must be an ISO 4217 currency code such as EUR, MXN or BRL")]
    UnknownCurrency,
    #[error("{0} is an ISO 4217 fund, metal or special code, not a currency accepted here")]
    NotACurrency(String),
}

/// Which ISO 4217 codes are accepted as currencies.
///
/// By default: codes with minor units that are neither fund codes (BOV, CHE, CHW, CLF, COU, MXV,
/// USN, UYI, UYW) nor special X-codes (XAU and the other metals, XTS, XXX, XDR, XSU, XUA, XAD, the
/// bond units XBA…XBD). Both lists are the `fund` and `special` flags of the `iso_currency`
/// crate's data, taken from the ISO 4217 list (fund codes are its `IsFund` entries). Codes named in
/// `transactions.extra_currencies` are accepted too.
#[derive(Debug, Clone, Default)]
pub struct Currencies {
    extra: Arc<[Currency]>,
}

impl Currencies {
    /// The default set plus `extra` codes; the error explains the first unusable code.
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let mut accepted = Vec::with_capacity(extra.len());
        for code in extra {
            let currency = iso_code(code).ok_or_else(|| format!("`{code}` is not an upper-case ISO 4217 code"))?;
            if !fits_the_column(currency) {
                return Err(format!(
                    "`{code}` has no minor units that an amount (at most {AMOUNT_SCALE} decimal places) can hold"
                ));
            }
            accepted.push(currency);
        }
        Ok(Self { extra: accepted.into() })
    }

    /// Parses an accepted ISO 4217 code (upper case).
    pub fn parse(&self, code: &str) -> Result<Currency, MoneyError> {
        let currency = iso_code(code).ok_or(MoneyError::UnknownCurrency)?;
        let is_money = fits_the_column(currency) && !currency.has_flag(Flag::Fund) && !currency.has_flag(Flag::Special);
        if is_money || self.extra.contains(&currency) {
            Ok(currency)
        } else {
            Err(MoneyError::NotACurrency(code.to_owned()))
        }
    }
}

/// Any ISO 4217 code, written in upper case.
fn iso_code(code: &str) -> Option<Currency> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Currency::from_code(code)
}

/// Whether the currency has minor units and the amount column's scale covers them.
fn fits_the_column(currency: Currency) -> bool {
    currency.exponent().is_some_and(|units| u32::from(units) <= AMOUNT_SCALE)
}

/// Minor units (decimal places) of a currency: JPY 0, EUR 2, KWD 3, CLF 4.
pub fn minor_units(currency: Currency) -> u16 {
    currency.exponent().unwrap_or(0)
}

/// An amount exactly as written, before any currency rule: the value is
/// `coefficient × 10^exponent`, trailing zeros moved into the exponent, so `100.50`, `100.5` and
/// `1.005e2` are the same amount. Only [`parse_amount`] makes one, so the coefficient has at most
/// [`AMOUNT_PRECISION`] digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    negative: bool,
    coefficient: u128,
    exponent: i64,
}

/// Parses amount text in the JSON number grammar, exactly; see the module documentation.
///
/// Hand-written because rust_decimal has no strict parser: `from_str` and `from_str_exact` accept
/// `_` separators, and `from_scientific` rounds a mantissa longer than 28 digits.
pub fn parse_amount(text: &str) -> Result<Amount, MoneyError> {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) if all_digits(fraction) => (integer, fraction),
        Some(_) => return Err(MoneyError::NotADecimal),
        None => (mantissa, ""),
    };
    if !all_digits(integer) || (integer.len() > 1 && integer.starts_with('0')) {
        return Err(MoneyError::NotADecimal);
    }
    let exponent = match exponent {
        None => 0,
        Some(text) => {
            let (sign, digits) = match text.as_bytes().first() {
                Some(b'-') => (-1, &text[1..]),
                Some(b'+') => (1, &text[1..]),
                _ => (1, text),
            };
            if !all_digits(digits) {
                return Err(MoneyError::NotADecimal);
            }
            // Beyond ±10^9 the value is far outside the column either way, so saturating is exact
            // enough: it only decides which refusal is reported.
            sign * digits.bytes().fold(0i64, |n, b| (n * 10 + i64::from(b - b'0')).min(1_000_000_000))
        }
    };
    let written_digits = if integer == "0" { fraction.len() } else { integer.len() + fraction.len() };
    if written_digits > AMOUNT_PRECISION as usize {
        return Err(MoneyError::TooManyDigits(AMOUNT_PRECISION));
    }
    // At most 25 digits (a leading "0" plus 24): far below u128::MAX.
    let coefficient = integer.bytes().chain(fraction.bytes()).fold(0u128, |n, b| n * 10 + u128::from(b - b'0'));
    // `fraction.len()` is at most 24 here.
    let mut amount = Amount { negative, coefficient, exponent: exponent - fraction.len() as i64 };
    if amount.coefficient == 0 {
        return Ok(Amount { negative: false, coefficient: 0, exponent: 0 });
    }
    while amount.coefficient.is_multiple_of(10) {
        amount.coefficient /= 10;
        amount.exponent += 1;
    }
    Ok(amount)
}

impl Amount {
    /// Decimal places the value needs: 1 for 100.5, 0 for 1e3.
    fn decimal_places(&self) -> u64 {
        self.exponent.min(0).unsigned_abs()
    }

    /// Digits before the decimal point: 3 for 100.5, zero or less for 0.05.
    fn integer_digits(&self) -> i64 {
        let digits = if self.coefficient == 0 { 0 } else { i64::from(self.coefficient.ilog10()) + 1 };
        digits + self.exponent
    }

    /// The exact value, if a `Decimal` can hold it (at most 28 decimal places and 96 bits).
    pub fn exact(&self) -> Option<Decimal> {
        let scale = u32::try_from(self.decimal_places()).ok().filter(|&scale| scale <= Decimal::MAX_SCALE)?;
        let shift = u32::try_from(self.exponent.max(0)).ok()?;
        let magnitude = i128::try_from(self.coefficient).ok()?.checked_mul(10i128.checked_pow(shift)?)?;
        Decimal::try_from_i128_with_scale(if self.negative { -magnitude } else { magnitude }, scale).ok()
    }

    /// Checks what needs no currency: the amount is positive, at most `max` and within the
    /// column. `max` is a value the column holds (config checks `transactions.max_amount`).
    pub fn check_range(&self, max: Decimal) -> Result<(), MoneyError> {
        if self.negative || self.coefficient == 0 {
            return Err(MoneyError::NotPositive);
        }
        let too_large = self.integer_digits() > AMOUNT_INTEGER_DIGITS
            // Not exact only with more than 28 decimal places, i.e. (≤ 24 digits) below 10^-4.
            || self.exact().is_some_and(|value| value > max);
        if too_large {
            return Err(MoneyError::TooLarge(max.normalize().to_string()));
        }
        Ok(())
    }
}

impl Money {
    /// Validates `amount` in `currency`: positive, at most `max`, exactly representable with the
    /// currency's minor units. The amount is kept at exactly that scale (`100.5` BRL is `100.50`).
    pub fn new(amount: Amount, currency: Currency, max: Decimal) -> Result<Self, MoneyError> {
        amount.check_range(max)?;
        let units = minor_units(currency);
        let too_precise = || MoneyError::TooPrecise { currency: currency.code().to_owned(), minor_units: units };
        if amount.decimal_places() > u64::from(units) {
            return Err(too_precise());
        }
        let mut value = amount.exact().ok_or_else(too_precise)?;
        // Exact: at most 20 integer digits (checked above) plus at most 4 decimal places fit.
        value.rescale(u32::from(units));
        Ok(Self { amount: value, currency })
    }

    /// [`parse_amount`] then [`Money::new`].
    pub fn parse(text: &str, currency: Currency, max: Decimal) -> Result<Self, MoneyError> {
        Self::new(parse_amount(text)?, currency, max)
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

/// Formats a stored amount in the stored currency code, whatever the accepted set is today
/// (`transactions.extra_currencies` may have changed since the row was written).
pub fn format_stored(amount: Decimal, code: &str) -> String {
    match iso_code(code) {
        Some(currency) if fits_the_column(currency) => format_amount(amount, currency),
        _ => amount.normalize().to_string(),
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// `"100.50 BRL"`, for tests and tools: default currencies, limited only by the column.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (amount, code) = s.split_once(' ').ok_or(MoneyError::NotADecimal)?;
        Self::parse(amount, Currencies::default().parse(code)?, column_max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn max() -> Decimal {
        Decimal::from(1_000_000_000)
    }

    fn currency(code: &str) -> Currency {
        Currencies::default().parse(code).expect(code)
    }

    fn parse(text: &str, code: &str) -> Result<String, MoneyError> {
        Money::parse(text, currency(code), max()).map(|m| m.amount_text())
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        for (code, units) in [("JPY", 0), ("BRL", 2), ("EUR", 2), ("MXN", 2), ("KWD", 3), ("CLP", 0)] {
            assert_eq!(minor_units(currency(code)), units, "{code}");
        }
    }

    #[test]
    fn unknown_and_lowercase_codes_are_unknown() {
        for code in ["XYZ", "brl", "Brl", "EU", "EURO", "", "BR1"] {
            assert_eq!(Currencies::default().parse(code), Err(MoneyError::UnknownCurrency), "{code}");
        }
    }

    #[test]
    fn fund_metal_and_special_codes_are_not_currencies() {
        let funds = ["BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "UYI", "UYW"];
        let special = ["XAU", "XAG", "XPT", "XPD", "XTS", "XXX", "XDR", "XSU", "XUA", "XAD", "XBA", "XBD"];
        for code in funds.into_iter().chain(special) {
            assert_eq!(Currencies::default().parse(code), Err(MoneyError::NotACurrency(code.to_owned())), "{code}");
        }
        for code in ["XOF", "XAF", "XCD", "XPF", "CHF", "UYU", "MXN", "CLP", "COP", "BOB", "USD"] {
            assert!(Currencies::default().parse(code).is_ok(), "{code} is a currency");
        }
    }

    #[test]
    fn configured_extra_codes_are_accepted_and_unusable_ones_refused() {
        let extra = Currencies::new(&["CLF".to_owned(), "MXV".to_owned()]).expect("usable");
        assert_eq!(extra.parse("CLF").map(minor_units), Ok(4));
        assert!(extra.parse("MXV").is_ok());
        assert!(extra.parse("BOV").is_err(), "only the listed ones");
        for code in ["XAU", "XXX", "clf", "ABC"] {
            assert!(Currencies::new(&[code.to_owned()]).is_err(), "{code}");
        }
    }

    #[test]
    fn amounts_respect_precision_sign_and_maximum() {
        assert_eq!(parse("100.50", "BRL"), Ok("100.50".to_owned()));
        assert_eq!(parse("100.5", "BRL"), Ok("100.50".to_owned()));
        assert_eq!(parse("100.500", "BRL"), Ok("100.50".to_owned()), "trailing zeros do not change the value");
        assert!(matches!(parse("100.505", "BRL"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(parse("1.5", "JPY"), Err(MoneyError::TooPrecise { .. })));
        assert_eq!(parse("1.250", "KWD"), Ok("1.250".to_owned()));
        assert_eq!(parse("0", "BRL"), Err(MoneyError::NotPositive));
        assert_eq!(parse("0.00", "BRL"), Err(MoneyError::NotPositive));
        assert_eq!(parse("-0", "BRL"), Err(MoneyError::NotPositive));
        assert_eq!(parse("0e99999999999999999999", "BRL"), Err(MoneyError::NotPositive));
        assert_eq!(parse("-1", "BRL"), Err(MoneyError::NotPositive));
        assert!(matches!(parse("1000000000.01", "BRL"), Err(MoneyError::TooLarge(_))));
        assert_eq!(parse("1000000000", "BRL"), Ok("1000000000.00".to_owned()), "the maximum itself");
    }

    #[test]
    fn exponents_are_fine_only_when_the_value_is_exact_at_the_currency_scale() {
        for (text, code, expected) in [
            ("1.5e1", "BRL", "15.00"),
            ("1.005e2", "BRL", "100.50"),
            ("1E2", "JPY", "100"),
            ("1e+2", "JPY", "100"),
            ("1e-2", "EUR", "0.01"),
            ("1.500e0", "BRL", "1.50"),
            ("12000e-3", "JPY", "12"),
            ("1e05", "JPY", "100000"),
            ("0.001e3", "JPY", "1"),
        ] {
            assert_eq!(parse(text, code), Ok(expected.to_owned()), "{text} {code}");
        }
        for (text, code) in [("1.234e0", "BRL"), ("1e-3", "BRL"), ("1.5e0", "JPY"), ("1e-999999999999", "KWD")] {
            assert!(matches!(parse(text, code), Err(MoneyError::TooPrecise { .. })), "{text} {code}");
        }
        for text in ["1e10", "1e21", "1e999999999999999"] {
            assert!(matches!(parse(text, "BRL"), Err(MoneyError::TooLarge(_))), "{text}");
        }
    }

    #[test]
    fn more_digits_than_the_column_holds_are_refused_not_rounded() {
        assert_eq!(parse("100.000000000000000000000000000001e0", "BRL"), Err(MoneyError::TooManyDigits(24)));
        assert_eq!(parse("100.000000000000000000000000000001", "BRL"), Err(MoneyError::TooManyDigits(24)));
        assert_eq!(parse("1234567890123456789012345", "JPY"), Err(MoneyError::TooManyDigits(24)));
        assert_eq!(parse("0.0000000000000000000000001", "BRL"), Err(MoneyError::TooManyDigits(24)));
        let clf = Currencies::new(&["CLF".to_owned()]).expect("CLF").parse("CLF").expect("CLF");
        let largest = Money::parse("99999999999999999999.9999", clf, column_max()).expect("24 digits fit");
        assert_eq!(largest.amount(), column_max());
        let over = Money::parse("100000000000000000000", clf, column_max());
        assert!(matches!(over, Err(MoneyError::TooLarge(_))), "{over:?}");
    }

    #[test]
    fn malformed_text_is_not_a_decimal() {
        for text in [
            "",
            "abc",
            "1.2.3",
            ".5",
            "5.",
            "-.5",
            "+5",
            "1,50",
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "inf",
            "0x10",
            "1e",
            "1e+",
            "1e-",
            "e5",
            "--1",
            "1_000",
            "1_000e0",
            "1e1_0",
            " 5",
            "5 ",
            "5\n",
            "05",
            "00.5",
            "-05",
            "1.e5",
            "1.5e1.5",
            "1ee5",
            "١٢",
            "５",
            "1e+-5",
            "0.5.",
            "-",
        ] {
            assert_eq!(parse_amount(text), Err(MoneyError::NotADecimal), "{text:?}");
        }
    }

    #[test]
    fn from_str_reads_amount_and_code() {
        let money: Money = "100.5 BRL".parse().expect("valid");
        assert_eq!(money.amount_text(), "100.50");
        assert_eq!("1 MXV".parse::<Money>(), Err(MoneyError::NotACurrency("MXV".to_owned())));
    }

    /// `value` written with mantissa `value × 10^-shift`, `zeros` trailing zeros and `e{shift}`.
    fn written(value: Decimal, shift: i32, zeros: usize, capital: bool) -> String {
        let mut mantissa = value;
        let scale = i64::from(value.scale()) + i64::from(shift);
        if scale >= 0 {
            mantissa.set_scale(u32::try_from(scale).expect("small")).expect("scale fits");
        } else {
            mantissa = value * Decimal::from(10i64.pow(shift.unsigned_abs()));
            mantissa.rescale(0);
        }
        let mut text = mantissa.to_string();
        if zeros > 0 {
            if !text.contains('.') {
                text.push('.');
            }
            text.push_str(&"0".repeat(zeros));
        }
        if shift != 0 {
            text.push_str(&format!("{}{shift}", if capital { 'E' } else { 'e' }));
        }
        text
    }

    proptest! {
        /// Any value, written plainly or with an exponent, is accepted with exactly its value (and
        /// then formats and parses back to itself) if the currency's scale represents it exactly,
        /// and refused otherwise.
        #[test]
        fn every_value_is_exact_at_the_currency_scale_or_refused(
            coefficient in 1i64..10_000_000_000_000,
            places in 0u32..8,
            shift in -6i32..7,
            zeros in 0usize..3,
            capital: bool,
            code in prop::sample::select(vec!["JPY", "CLP", "BRL", "EUR", "KWD", "BHD"]),
        ) {
            let value = Decimal::new(coefficient, places);
            let text = written(value, shift, zeros, capital);
            let currency = currency(code);
            let units = u32::from(minor_units(currency));
            let representable = value.normalize().scale() <= units;
            match Money::parse(&text, currency, column_max()) {
                Ok(money) => {
                    prop_assert!(representable, "{} {} accepted as {}", text, code, money.amount_text());
                    prop_assert_eq!(money.amount(), value, "{} {}", text, code);
                    prop_assert_eq!(money.amount().scale(), units);
                    let again = Money::parse(&money.amount_text(), currency, column_max());
                    prop_assert_eq!(again, Ok(money));
                }
                Err(error) => {
                    prop_assert!(!representable, "{} {} refused: {}", text, code, error);
                    let too_precise = matches!(error, MoneyError::TooPrecise { .. });
                    prop_assert!(too_precise, "{} {}: {}", text, code, error);
                }
            }
        }

        /// Parse → format → parse is the identity for every accepted text, whatever its form.
        #[test]
        fn parse_format_parse_is_the_identity(
            text in "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,2})?",
            code in prop::sample::select(vec!["JPY", "BRL", "KWD"]),
        ) {
            let currency = currency(code);
            if let Ok(money) = Money::parse(&text, currency, column_max()) {
                let formatted = money.amount_text();
                let again = Money::parse(&formatted, currency, column_max()).expect("canonical text parses");
                prop_assert_eq!(again, money);
                prop_assert_eq!(again.amount_text(), formatted);
                prop_assert_eq!(Some(money.amount()), parse_amount(&text).expect("parsed").exact(), "exact value");
            }
        }

        /// Arbitrary text never panics, and whatever is accepted is plain JSON number syntax.
        #[test]
        fn arbitrary_text_is_refused_or_json_number_syntax(text in "\\PC{0,40}") {
            if parse_amount(&text).is_ok() {
                prop_assert!(serde_json::from_str::<serde_json::Number>(&text).is_ok(), "{:?}", text);
            }
        }
    }
}
