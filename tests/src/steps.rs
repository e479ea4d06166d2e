//! [`StepCheck`]: every helper program prints `step N` (or, for programs
//! that read stdin, `step N line-N`) once per step; this checks that the
//! steps seen across a whole chain of processes go 1, 2, 3 ... with no gap,
//! no repeat and no `CORRUPT` report.

use crate::programs::Input;

/// Continuity checker for the `step N` lines of one logical run, possibly
/// spread over several processes (the original and its resumptions).
#[derive(Debug, Clone)]
pub struct StepCheck {
    input: Input,
    next: u32,
    total: u32,
}

impl StepCheck {
    /// Expects `step first` next, and no step beyond `total`.
    pub fn new(first: u32, total: u32, input: Input) -> StepCheck {
        StepCheck {
            input,
            next: first,
            total,
        }
    }

    /// The last step accepted (0 before any).
    pub fn last(&self) -> u32 {
        self.next - 1
    }

    /// The step expected next.
    pub fn expected(&self) -> u32 {
        self.next
    }

    /// Whether the final step has been accepted.
    pub fn complete(&self) -> bool {
        self.last() == self.total
    }

    /// Checks one stdout line and returns its step number. Errors on a
    /// `CORRUPT` report, a malformed line, a repeated, skipped or excess
    /// step, or (for [`Input::Lines`]) an echoed input line that is not
    /// `line-N`.
    pub fn accept(&mut self, line: &str) -> Result<u32, String> {
        if line.contains("CORRUPT") {
            return Err(format!("the program reported corruption: {line:?}"));
        }
        let rest = line.strip_prefix("step ").ok_or_else(|| {
            format!(
                "unexpected stdout line {line:?} (expected `step {}`)",
                self.next
            )
        })?;
        let (num, payload) = match rest.split_once(' ') {
            Some((n, p)) => (n, Some(p)),
            None => (rest, None),
        };
        let n: u32 = num.parse().map_err(|_| {
            format!(
                "unexpected stdout line {line:?} (expected `step {}`)",
                self.next
            )
        })?;
        if n != self.next {
            let what = if n < self.next {
                "repeated"
            } else {
                "skipped to"
            };
            return Err(format!(
                "steps not continuous: expected step {}, got {line:?} ({what} step {n})",
                self.next
            ));
        }
        if n > self.total {
            return Err(format!("step {n} is past the last step {}", self.total));
        }
        match (self.input, payload) {
            (Input::Idle, None) => {}
            (Input::Lines, Some(p)) if p == input_line(n) => {}
            (Input::Idle, Some(_)) | (Input::Lines, _) => {
                let want = match self.input {
                    Input::Idle => format!("step {n}"),
                    Input::Lines => format!("step {n} {}", input_line(n)),
                };
                return Err(format!("malformed step line {line:?}, expected {want:?}"));
            }
        }
        self.next += 1;
        Ok(n)
    }
}

/// The input line fed for step `n` to a program that reads stdin.
pub fn input_line(n: u32) -> String {
    format!("line-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_consecutive_steps_and_rejects_gaps_repeats_and_corruption() {
        let mut c = StepCheck::new(1, 3, Input::Idle);
        assert_eq!(c.accept("step 1"), Ok(1));
        assert!(c.accept("step 1").unwrap_err().contains("repeated"));
        assert!(c.accept("step 3").unwrap_err().contains("skipped"));
        assert_eq!(c.accept("step 2"), Ok(2));
        assert!(c
            .accept("CORRUPT stack")
            .unwrap_err()
            .contains("corruption"));
        assert!(c.accept("hello").is_err());
        assert_eq!(c.accept("step 3"), Ok(3));
        assert!(c.complete());
        assert!(c.accept("step 4").is_err());
    }

    #[test]
    fn input_lines_must_be_echoed() {
        let mut c = StepCheck::new(4, 9, Input::Lines);
        assert!(c.accept("step 4").is_err());
        assert!(c.accept("step 4 line-5").is_err());
        assert_eq!(c.accept("step 4 line-4"), Ok(4));
        assert_eq!(c.last(), 4);
    }
}
