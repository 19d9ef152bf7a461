//! Evidence, then a verdict.
//!
//! A drill states what it saw as it sees it (with the time since the drill
//! began), and every promise it checks is either kept, with its evidence,
//! or broken, with what broke it. The verdict is PASS only when nothing
//! broke.

use std::time::Instant;

pub struct Report {
    name: &'static str,
    began: Instant,
    broken: Vec<String>,
    kept: Vec<String>,
}

impl Report {
    pub fn new(name: &'static str) -> Report {
        println!("drill {name}");
        Report { name, began: Instant::now(), broken: Vec::new(), kept: Vec::new() }
    }

    /// Something seen, for the reader (not a judgement).
    pub fn saw(&self, line: impl AsRef<str>) {
        println!("[{:6.1}s] {}", self.began.elapsed().as_secs_f64(), line.as_ref());
    }

    /// A promise held, and why we know.
    pub fn kept(&mut self, promise: impl Into<String>) {
        let promise = promise.into();
        self.saw(format!("kept: {promise}"));
        self.kept.push(promise);
    }

    /// A promise broke.
    pub fn broke(&mut self, promise: impl Into<String>) {
        let promise = promise.into();
        self.saw(format!("BROKEN: {promise}"));
        self.broken.push(promise);
    }

    /// `kept` or `broke`, by `ok`.
    pub fn check(&mut self, ok: bool, kept: impl Into<String>, broke: impl Into<String>) {
        if ok {
            self.kept(kept)
        } else {
            self.broke(broke)
        }
    }

    pub fn is_broken(&self) -> bool {
        !self.broken.is_empty()
    }

    /// Prints the verdict; true when every promise held.
    pub fn verdict(self) -> bool {
        let took = self.began.elapsed().as_secs_f64();
        if self.broken.is_empty() {
            println!("VERDICT: PASS {} ({took:.1} s): {}", self.name, self.kept.join("; "));
            true
        } else {
            println!("VERDICT: FAIL {} ({took:.1} s): {}", self.name, self.broken.join("; "));
            false
        }
    }

    /// Ends the drill early: the drill itself could not go on (the system
    /// was not up, a fault could not be caused). That is a failure too: a
    /// drill that did not run proved nothing.
    pub fn abort(mut self, why: impl std::fmt::Display) -> bool {
        self.broke(format!("the drill could not run: {why}"));
        self.verdict()
    }
}
