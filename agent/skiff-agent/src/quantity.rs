//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1e3`, `2k`) read exactly, so that
//! `0.1` CPU is 100 millicores and not 101 after a float round trip.
//!
//! `milli_value` and `value` round up, as apimachinery's `MilliValue()` and `Value()` do.

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// `mantissa * 2^binary * 10^decimal`, kept as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    binary: u32,
    decimal: i32,
}

impl Quantity {
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let bad = || QuantityError(text.to_string());
        let s = text.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(bad());
        }
        let mut mantissa: i128 = 0;
        for d in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(d - b'0')))
                .ok_or_else(bad)?;
        }
        let scale = i32::try_from(fraction.len()).map_err(|_| bad())?;
        let (binary, decimal) = match suffix {
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "" => (0, 0),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            exp => {
                let digits = exp
                    .strip_prefix('e')
                    .or_else(|| exp.strip_prefix('E'))
                    .ok_or_else(bad)?;
                (0, digits.parse::<i32>().map_err(|_| bad())?)
            }
        };
        Ok(Quantity {
            mantissa: if negative { -mantissa } else { mantissa },
            binary,
            decimal: decimal - scale,
        })
    }

    /// The quantity times `10^shift`, rounded up to an integer.
    fn scaled_ceil(&self, shift: i32) -> Option<i128> {
        let mut n = self.mantissa.checked_mul(1i128.checked_shl(self.binary)?)?;
        let exp = self.decimal + shift;
        if exp >= 0 {
            n = n.checked_mul(10i128.checked_pow(u32::try_from(exp).ok()?)?)?;
            Some(n)
        } else {
            let d = 10i128.checked_pow(u32::try_from(-exp).ok()?)?;
            let q = n.div_euclid(d);
            Some(if n.rem_euclid(d) == 0 { q } else { q + 1 })
        }
    }

    /// In thousandths, rounded up (`MilliValue()`); None when it does not fit.
    pub fn milli_value(&self) -> Option<i128> {
        self.scaled_ceil(3)
    }

    /// In units, rounded up (`Value()`); None when it does not fit.
    pub fn value(&self) -> Option<i128> {
        self.scaled_ceil(0)
    }
}

/// `ceil(a / b)` for positive `b`.
pub fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 {
        q
    } else {
        q + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> i128 {
        Quantity::parse(s).unwrap().milli_value().unwrap()
    }

    fn units(s: &str) -> i128 {
        Quantity::parse(s).unwrap().value().unwrap()
    }

    #[test]
    fn parses_every_suffix_exactly() {
        assert_eq!(milli("100m"), 100);
        assert_eq!(milli("0.1"), 100);
        assert_eq!(milli("1.5"), 1500);
        assert_eq!(milli("2"), 2000);
        assert_eq!(milli("1u"), 1, "rounded up");
        assert_eq!(units("64Mi"), 64 << 20);
        assert_eq!(units("1.5Gi"), 3 << 29);
        assert_eq!(units("1k"), 1000);
        assert_eq!(units("1e3"), 1000);
        assert_eq!(units("1E3"), 1000);
        assert_eq!(units("128974848"), 128_974_848);
        assert_eq!(units("129M"), 129_000_000);
        assert_eq!(units("250m"), 1, "Value() rounds up");
        assert_eq!(units("-1"), -1);
        assert_eq!(units("+2"), 2);
        assert_eq!(units(".5k"), 500);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1x", "1..2", "Mi", "1e", "1Gi3", "."] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            Quantity::parse("99999999999999999999999999999999999999999Ei"),
            Err(QuantityError(
                "99999999999999999999999999999999999999999Ei".into()
            ))
        );
        assert_eq!(Quantity::parse("9e60").unwrap().value(), None, "too big");
    }

    #[test]
    fn ceiling_division() {
        assert_eq!(div_ceil(1500, 1000), 2);
        assert_eq!(div_ceil(2000, 1000), 2);
        assert_eq!(div_ceil(0, 1000), 0);
    }
}
