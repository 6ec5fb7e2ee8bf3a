//! Exact decimals as PostgreSQL's `numeric` sends them, for combining rollup pieces in the
//! server: sums, comparisons, and the mean rounded the way `round(sum / n, 10)` rounds it.
//!
//! Every value Atlas aggregates fits: integers are `bigint`, decimals `numeric(20,5)`, and a
//! sum of them would need more rows than a database can hold to leave an `i128`. Anything
//! that does not fit (or NaN) is an error, never a rounded value.

use std::cmp::Ordering;
use std::fmt;

use tokio_postgres::types::{FromSql, Type};

/// `mantissa × 10^-scale`, with `scale` the display scale PostgreSQL gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numeric {
    mantissa: i128,
    scale: u32,
}

/// A value that does not fit (or is not a number).
#[derive(Debug, thiserror::Error)]
#[error("numeric out of range: {0}")]
pub struct OutOfRange(String);

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_POS: u16 = 0x0000;
/// PostgreSQL's NUMERIC_MIN_SIG_DIGITS: a quotient has at least this many significant digits.
const MIN_SIG_DIGITS: i64 = 16;
/// PostgreSQL's NUMERIC_MAX_DISPLAY_SCALE.
const MAX_DISPLAY_SCALE: i64 = 1000;
/// Fraction digits of a mean (the API's `round(…, 10)`).
pub const MEAN_SCALE: u32 = 10;

/// 10^0 … 10^38, every power an i128 holds.
const POWERS: [i128; 39] = {
    let mut p = [1_i128; 39];
    let mut i = 1;
    while i < 39 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

fn pow10(e: u32) -> Result<i128, OutOfRange> {
    usize::try_from(e)
        .ok()
        .and_then(|e| POWERS.get(e).copied())
        .ok_or_else(|| OutOfRange(format!("10^{e}")))
}

/// Number of decimal digits of `v` (> 0).
fn digits(v: u128) -> i64 {
    i64::from(v.ilog10()) + 1
}

/// `num / den` (both ≥ 0, den > 0) rounded half away from zero, as PostgreSQL rounds.
fn div_round(num: i128, den: i128) -> i128 {
    let (q, r) = (num / den, num % den);
    if r >= den - r { q + 1 } else { q }
}

impl Numeric {
    /// An integer.
    pub fn from_int(v: i64) -> Self {
        Self {
            mantissa: i128::from(v),
            scale: 0,
        }
    }

    /// The mantissa at `scale` (≥ the value's own).
    fn at(self, scale: u32) -> Result<i128, OutOfRange> {
        self.mantissa
            .checked_mul(pow10(scale - self.scale)?)
            .ok_or_else(|| OutOfRange(format!("{self} at scale {scale}")))
    }

    /// The exact sum; its scale is the larger of the two, as PostgreSQL's.
    pub fn plus(self, other: Self) -> Result<Self, OutOfRange> {
        let scale = self.scale.max(other.scale);
        let mantissa = self
            .at(scale)?
            .checked_add(other.at(scale)?)
            .ok_or_else(|| OutOfRange(format!("{self} + {other}")))?;
        Ok(Self { mantissa, scale })
    }

    /// Compares the values (not their scales).
    pub fn compare(self, other: Self) -> Result<Ordering, OutOfRange> {
        let scale = self.scale.max(other.scale);
        Ok(self.at(scale)?.cmp(&other.at(scale)?))
    }

    /// PostgreSQL's `round(self / n, 10)` for a count `n` ≥ 1: the quotient is first taken to
    /// the scale `numeric` division chooses (at least 16 significant digits, no fewer than
    /// the dividend's scale) and rounded there, then rounded to 10 places - two roundings,
    /// as the database does them, so a mean served from rollups equals `avg` over the raw
    /// values digit for digit.
    pub fn mean(self, n: i64) -> Result<Self, OutOfRange> {
        if n < 1 {
            return Err(OutOfRange(format!("mean over {n} values")));
        }
        if self.mantissa == 0 {
            return Ok(Self {
                mantissa: 0,
                scale: 0,
            });
        }
        let abs = self.mantissa.unsigned_abs();
        // Base-10000 weight and first digit group of the dividend and of n (select_div_scale).
        let e1 = digits(abs) - 1 - i64::from(self.scale);
        let w1 = e1.div_euclid(4);
        let shift = i64::from(self.scale) + 4 * w1;
        let first1 = if shift >= 0 {
            abs / 10_u128.pow(u32::try_from(shift).unwrap_or(0))
        } else {
            abs * 10_u128.pow(u32::try_from(-shift).unwrap_or(0))
        };
        let n = i128::from(n);
        let w2 = (digits(n.unsigned_abs()) - 1) / 4;
        let first2 = n.unsigned_abs() / 10_u128.pow(u32::try_from(4 * w2).unwrap_or(0));
        let mut qweight = w1 - w2;
        if first1 <= first2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * 4)
            .max(i64::from(self.scale))
            .clamp(0, MAX_DISPLAY_SCALE);
        let rscale = u32::try_from(rscale).unwrap_or(0);
        let num = self
            .mantissa
            .checked_abs()
            .and_then(|m| m.checked_mul(pow10(rscale - self.scale).ok()?))
            .ok_or_else(|| OutOfRange(format!("{self} / {n}")))?;
        let mut q = div_round(num, n);
        let mut scale = rscale;
        if scale > MEAN_SCALE {
            q = div_round(q, pow10(scale - MEAN_SCALE)?);
            scale = MEAN_SCALE;
        }
        Ok(Self {
            mantissa: if self.mantissa < 0 { -q } else { q },
            scale,
        })
    }
}

/// Without trailing fraction zeros (PostgreSQL's `trim_scale`).
impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut m, mut scale) = (self.mantissa.unsigned_abs(), self.scale);
        // u64 arithmetic where it fits (nearly always): u128 division is several times slower.
        match u64::try_from(m) {
            Ok(mut small) => {
                while scale > 0 && small % 10 == 0 {
                    small /= 10;
                    scale -= 1;
                }
                m = u128::from(small);
            }
            Err(_) => {
                while scale > 0 && m % 10 == 0 {
                    m /= 10;
                    scale -= 1;
                }
            }
        }
        if self.mantissa < 0 && m != 0 {
            f.write_str("-")?;
        }
        // The digits of m (at most 39), most significant first.
        let mut buf = [0_u8; 40];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + u8::try_from(m % 10).unwrap_or(0);
            m /= 10;
            if m == 0 || start == 0 {
                break;
            }
        }
        let digits = std::str::from_utf8(&buf[start..]).map_err(|_| fmt::Error)?;
        let scale = usize::try_from(scale).unwrap_or(0);
        if scale == 0 {
            f.write_str(digits)
        } else if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{int}.{frac}")
        } else {
            f.write_str("0.")?;
            for _ in digits.len()..scale {
                f.write_str("0")?;
            }
            f.write_str(digits)
        }
    }
}

/// The binary form: digit count, weight, sign and display scale (16 bits each), then base-10000
/// digits, the first worth 10000^weight.
impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<u16, OutOfRange> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| OutOfRange("truncated numeric".into()))
        };
        let ndigits = usize::from(word(0)?);
        let weight = i64::from(word(1)?.cast_signed());
        let sign = word(2)?;
        let scale = u32::from(word(3)?);
        if sign != NUMERIC_POS && sign != NUMERIC_NEG {
            return Err(Box::new(OutOfRange("NaN or infinity".into())));
        }
        if i64::from(scale) > MAX_DISPLAY_SCALE {
            return Err(Box::new(OutOfRange(format!("display scale {scale}"))));
        }
        let too_long = || OutOfRange("more than 38 digits".into());
        // Group i is worth 10000^(weight - i): at `scale`, 10^(4 (weight - i) + scale).
        let mut m: i128 = 0;
        for i in 0..ndigits {
            let d = i128::from(word(4 + i)?);
            let exp = 4 * (weight - i64::try_from(i)?) + i64::from(scale);
            let part = if exp >= 0 {
                d.checked_mul(pow10(u32::try_from(exp)?).map_err(|_| too_long())?)
                    .ok_or_else(too_long)?
            } else {
                // Past the display scale a group holds only zeros.
                let p = pow10(u32::try_from(-exp)?)?;
                if d % p != 0 {
                    return Err(Box::new(OutOfRange(
                        "digits beyond the display scale".into(),
                    )));
                }
                d / p
            };
            m = m.checked_add(part).ok_or_else(too_long)?;
        }
        Ok(Self {
            mantissa: if sign == NUMERIC_NEG { -m } else { m },
            scale,
        })
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(m: i128, scale: u32) -> Numeric {
        Numeric { mantissa: m, scale }
    }

    #[test]
    fn prints_like_trim_scale() {
        assert_eq!(n(2_112_500, 5).to_string(), "21.125");
        assert_eq!(n(-5, 2).to_string(), "-0.05");
        assert_eq!(n(0, 5).to_string(), "0");
        assert_eq!(n(1_200, 2).to_string(), "12");
        assert_eq!(n(-7, 0).to_string(), "-7");
        assert_eq!(n(7, 41).to_string(), format!("0.{}7", "0".repeat(40)));
        assert_eq!(n(i128::MAX, 0).to_string(), i128::MAX.to_string());
        assert_eq!(
            n(i128::MIN + 1, 38).to_string(),
            "-1.70141183460469231731687303715884105727"
        );
    }

    #[test]
    fn means_round_twice_like_numeric_division() {
        // 2 / 3 at 16 significant digits, then 10 places.
        assert_eq!(
            n(2, 0).mean(3).map(|m| m.to_string()).ok(),
            Some("0.6666666667".into())
        );
        assert_eq!(
            n(-2, 0).mean(3).map(|m| m.to_string()).ok(),
            Some("-0.6666666667".into())
        );
        // A large mean keeps only the division's scale (16 - 4 × 2 = 8 places, fewer than 10).
        assert_eq!(
            n(1_000_000_000_001, 0).mean(3).map(|m| m.to_string()).ok(),
            Some("333333333333.66666667".into())
        );
        assert_eq!(
            n(12_345, 5).mean(1).map(|m| m.to_string()).ok(),
            Some("0.12345".into())
        );
    }

    #[test]
    fn sums_and_comparisons_align_scales() {
        let s = n(15, 1).plus(n(2, 0)).ok();
        assert_eq!(s.map(|s| s.to_string()), Some("3.5".into()));
        assert_eq!(n(15, 1).compare(n(2, 0)).ok(), Some(Ordering::Less));
        assert_eq!(n(i128::MAX, 0).plus(n(1, 0)).ok(), None);
    }
}
