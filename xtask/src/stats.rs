//! Summaries over repeated runs.

/// Median, minimum and maximum of a few run results.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Summary { median, min: v[0], max: v[v.len() - 1], n: v.len() }
    }

    /// `12.3 ±0.4` with the given number of decimals (± is half the min-max range).
    pub fn fmt(&self, decimals: usize) -> String {
        if self.n <= 1 {
            format!("{:.*}", decimals, self.median)
        } else {
            format!("{:.*} ±{:.*}", decimals, self.median, decimals, (self.max - self.min) / 2.0)
        }
    }
}
