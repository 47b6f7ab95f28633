//! Reading the service's `/metrics` between two scrapes.

/// How much the series of `metric` that `selected` picks grew between two scrapes.
pub fn increase(before: &str, after: &str, metric: &str, selected: impl Fn(&str) -> bool) -> f64 {
    let sum = |text: &str| -> f64 {
        text.lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{'))
                    && selected(line)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    sum(after) - sum(before)
}
