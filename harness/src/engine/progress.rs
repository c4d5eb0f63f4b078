//! Progress display of a run: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;

/// Progress display: a bar on a terminal, plain lines otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    next_line_ms: u64,
    step_ms: u64,
    enabled: bool,
}

impl Progress {
    pub(crate) fn new(duration_ms: u64, enabled: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = (enabled && tty).then(|| {
            let b = indicatif::ProgressBar::new(duration_ms);
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress { bar, next_line_ms: 0, step_ms: (duration_ms / 10).clamp(1000, 10_000), enabled }
    }

    pub(crate) fn update(&mut self, at_ms: u64, msg: String) {
        if let Some(b) = &self.bar {
            b.set_position(at_ms);
            b.set_message(msg);
        } else if self.enabled && at_ms >= self.next_line_ms {
            eprintln!("harness: {:>6.1} s  {msg}", at_ms as f64 / 1000.0);
            self.next_line_ms = at_ms + self.step_ms;
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
