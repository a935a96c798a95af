//! Wall-clock instants as milliseconds since the Unix epoch.
//!
//! Both stores keep times as `BIGINT` milliseconds (not `timestamptz`) so that the same SQL,
//! comparisons and cursors work on SQLite and PostgreSQL; the API renders them as RFC 3339.

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn saturating_add_ms(self, ms: i64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// RFC 3339 with millisecond precision in UTC, e.g. `2026-11-29T06:57:47.123Z`.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }

    /// The start of the next UTC day after this instant.
    pub fn next_utc_midnight(self) -> Millis {
        let day_ms = 86_400_000;
        Millis((self.0.div_euclid(day_ms) + 1) * day_ms)
    }

    /// The UTC day number (days since the epoch), used to key daily counters.
    pub fn utc_day(self) -> i64 {
        self.0.div_euclid(86_400_000)
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_renders_known_instants() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(1_795_935_467_123).to_rfc3339(),
            "2026-11-29T06:57:47.123Z"
        );
        assert_eq!(
            Millis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn next_midnight_is_strictly_later_and_aligned() {
        let t = Millis(1_795_935_467_123);
        let m = t.next_utc_midnight();
        assert!(m > t);
        assert_eq!(m.0 % 86_400_000, 0);
        assert_eq!(m.to_rfc3339(), "2026-11-30T00:00:00.000Z");
    }
}
