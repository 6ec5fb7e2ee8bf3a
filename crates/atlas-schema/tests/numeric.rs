//! The server's exact decimals against PostgreSQL's: what `numeric` sends decodes to the same
//! value, and a mean combined from rollup pieces rounds as `round(sum / n, 10)` does.

use atlas_store::decimal::Numeric;
use atlas_testkit::{Rng, TestDb};

/// Sums as the rollups hold them: integers (scale 0) and decimals of `numeric(20,5)` sums
/// (scale 5), of every magnitude from 0.00001 to 38 digits, both signs.
fn sums(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut out = vec![
        "0".to_owned(),
        "0.00000".to_owned(),
        "1".to_owned(),
        "-1".to_owned(),
        "0.00001".to_owned(),
        "9223372036854775807".to_owned(),
        "-9223372036854775808".to_owned(),
        "99999999999999999999999999999999.99999".to_owned(),
        "2".to_owned(),
        "5.00000".to_owned(),
    ];
    while out.len() < n {
        let digits = 1 + rng.below(30);
        let mut m: String = (0..digits)
            .map(|_| char::from(b'0' + u8::try_from(rng.below(10)).unwrap_or(0)))
            .collect();
        let scale = if rng.below(2) == 0 { 0 } else { 5 };
        if scale == 5 {
            m = format!("{m:0>6}");
            m.insert(m.len() - 5, '.');
        }
        let sign = if rng.below(3) == 0 { "-" } else { "" };
        out.push(format!("{sign}{m}"));
    }
    out
}

#[tokio::test]
async fn means_of_rollup_sums_equal_numeric_division_digit_for_digit() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let sums = sums(&mut rng, 4_000);
    // Counts from 1 to billions: the quotient's weight decides the division's scale.
    let counts: Vec<i64> = (0..sums.len())
        .map(|i| match i % 4 {
            0 => 1 + rng.below(9),
            1 => 1 + rng.below(10_000),
            2 => 1 + rng.below(100_000_000),
            _ => 1 + rng.below(1_000_000_000_000),
        })
        .collect();
    let rows = admin
        .query(
            "SELECT s::numeric, trim_scale(s::numeric)::text, n, \
                    trim_scale(round(s::numeric / n::numeric, 10))::text \
             FROM unnest($1::text[], $2::bigint[]) AS x (s, n)",
            &[&sums, &counts],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), sums.len());
    for (i, r) in rows.iter().enumerate() {
        let sum: Numeric = r
            .try_get(0)
            .unwrap_or_else(|e| panic!("decoding {}: {e:?}", sums[i]));
        let printed: String = r.get(1);
        let n: i64 = r.get(2);
        let want: String = r.get(3);
        assert_eq!(sum.to_string(), printed, "decoding {}", sums[i]);
        let got = sum
            .mean(n)
            .unwrap_or_else(|e| panic!("{} / {n}: {e}", sums[i]));
        assert_eq!(got.to_string(), want, "{} / {n}", sums[i]);
    }
}

#[tokio::test]
async fn values_outside_the_exact_range_are_refused_not_rounded() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    for text in ["NaN", "1e40", "-1234567890123456789012345678901234567890.5"] {
        let r = admin
            .query_one("SELECT $1::text::numeric", &[&text])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.try_get::<_, Numeric>(0).is_err(), "{text}");
    }
}
