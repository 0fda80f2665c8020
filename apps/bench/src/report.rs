//! The benchmark's figures: a table for people, JSON for tools.

use serde_json::{Value, json};

/// One measured figure: a name, values with their units, and a note on how it was taken.
pub struct Figure {
    name: String,
    values: Vec<(&'static str, f64)>,
    note: Option<String>,
}

impl Figure {
    /// A figure with no values yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            values: Vec::new(),
            note: None,
        }
    }

    /// Adds a value in `unit`.
    pub fn value(mut self, unit: &'static str, value: f64) -> Self {
        self.values.push((unit, value));
        self
    }

    /// Says how it was measured.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Every figure of one run.
pub struct Report {
    description: String,
    figures: Vec<Figure>,
}

/// A figure for people: thousands separated, two significant decimals at most.
pub fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::from(sign);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// An empty report of the cluster `description`.
    pub fn new(description: &str) -> Self {
        Self {
            description: description.to_owned(),
            figures: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    /// Adds figures, in order.
    pub fn extend(&mut self, figures: impl IntoIterator<Item = Figure>) {
        self.figures.extend(figures);
    }

    /// Prints the table on standard output.
    pub fn print(&self) {
        println!("\n{}\n", self.description);
        let rows: Vec<(String, String, String)> = self
            .figures
            .iter()
            .map(|f| {
                let values = f
                    .values
                    .iter()
                    .map(|(unit, v)| format!("{} {unit}", number(*v)))
                    .collect::<Vec<_>>()
                    .join(", ");
                (f.name.clone(), values, f.note.clone().unwrap_or_default())
            })
            .collect();
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
        println!("| {:<w0$} | {:<w1$} | how |", "figure", "result");
        println!("|{}|{}|-----|", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
        for (name, values, note) in rows {
            println!("| {name:<w0$} | {values:<w1$} | {note} |");
        }
    }

    /// The figures as JSON.
    pub fn to_json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let values: serde_json::Map<String, Value> = f
                    .values
                    .iter()
                    .map(|(unit, v)| ((*unit).to_owned(), json!(v)))
                    .collect();
                json!({"figure": f.name, "values": values, "note": f.note})
            })
            .collect();
        json!({"cluster": self.description, "figures": figures})
    }
}
