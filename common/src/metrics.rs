//! A small writer for the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

/// Kinds of metric, as the `# TYPE` line names them.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative `_bucket{le=...}` samples with `_sum` and `_count`.
    Histogram,
}

/// Accumulates metrics as Prometheus text.
#[derive(Debug, Default)]
pub struct MetricsText {
    out: String,
}

impl MetricsText {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a metric family: its help and type lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// Adds a sample of the current family, with labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The text to serve.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escaped_labels() {
        let mut m = MetricsText::new();
        m.single("depot_up", Kind::Gauge, "1 while serving", 1.0);
        m.family("depot_log_records", Kind::Gauge, "Records stored")
            .sample("depot_log_records", &[("stream", "a\"b\\c\nd")], 42.0);
        let text = m.finish();
        assert!(
            text.contains("# TYPE depot_up gauge\ndepot_up 1\n"),
            "{text}"
        );
        assert!(
            text.contains("depot_log_records{stream=\"a\\\"b\\\\c\\nd\"} 42\n"),
            "{text}"
        );
    }
}
