//! A progress bar on standard error (a line every few seconds when it is not a terminal).

use crate::thousands;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A progress bar on standard error (a line every few seconds when it is not a terminal).
#[derive(Clone)]
pub struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    label: String,
    total: usize,
    done: AtomicUsize,
    start: Instant,
    shown: std::sync::Mutex<Instant>,
    terminal: bool,
}

impl Progress {
    pub fn new(label: String, total: usize) -> Self {
        Self(Arc::new(ProgressInner {
            label,
            total: total.max(1),
            done: AtomicUsize::new(0),
            start: Instant::now(),
            shown: std::sync::Mutex::new(Instant::now()),
            terminal: std::io::stderr().is_terminal(),
        }))
    }

    pub fn add(&self, n: usize) {
        let done = self.0.done.fetch_add(n, Ordering::Relaxed) + n;
        self.show(done, false);
    }

    pub fn set(&self, done: usize) {
        self.0.done.store(done, Ordering::Relaxed);
        self.show(done, false);
    }

    pub fn finish(&self) {
        self.show(self.0.done.load(Ordering::Relaxed), true);
    }

    fn show(&self, done: usize, last: bool) {
        let p = &self.0;
        {
            let mut shown = p.shown.lock().unwrap_or_else(|e| e.into_inner());
            let every = if p.terminal { 100 } else { 5_000 };
            if !last && shown.elapsed() < Duration::from_millis(every) {
                return;
            }
            *shown = Instant::now();
        }
        let fraction = (done as f64 / p.total as f64).min(1.0);
        let width = 30;
        let filled = (fraction * width as f64) as usize;
        let rate = done as f64 / p.start.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "{:<28} [{}{}] {:>3.0}% {}/{} {:.0}/s",
            p.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            fraction * 100.0,
            thousands(done),
            thousands(p.total),
            rate
        );
        if p.terminal {
            eprint!("\r{line}{}", if last { "\n" } else { "" });
        } else {
            eprintln!("{line}");
        }
    }
}
