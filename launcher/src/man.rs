//! What `pmig-run` and `pmig-resume` share on their command lines: the one-line errors,
//! `--version`, and the man page, made from the same text `--help` prints (so the two never
//! disagree). Included by both binaries (`#[path]` in `restorer/src/main.rs`).
//!
//! The help text has a fixed shape, which the man page follows:
//!
//! ```text
//! usage: NAME ...               SYNOPSIS (up to the first blank line; lines that start
//!        NAME ...               with spaces and not NAME continue the line above)
//!
//! Paragraphs.                   DESCRIPTION
//!
//!   --opt ARG   what it does    OPTIONS: two spaces, the option, two spaces or more, its
//!               more of it      text; deeper-indented lines continue it. An entry that
//!   PMIG_X=1    ...             starts with `PMIG_` goes to ENVIRONMENT.
//! ```

/// The synopsis: the help text up to its first blank line.
pub fn synopsis(help: &str) -> &str {
    help.split("\n\n").next().unwrap_or(help)
}

/// What a wrong command line prints: the error, the synopsis, and where the rest is.
pub fn usage_error(name: &str, help: &str, msg: &str) -> String {
    format!("{name}: {msg}\n{}\n(`{name} --help` says more)", synopsis(help))
}

/// The version line `--version` prints.
pub fn version(name: &str) -> String {
    format!("{name} (pmig) {}", env!("CARGO_PKG_VERSION"))
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` that roff would take for a
/// request.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// An option's name in roff: bold, with `-` as a real minus so it can be searched and pasted.
fn opt(spec: &str) -> String {
    let (name, arg) = spec.split_once(' ').unwrap_or((spec, ""));
    let name = esc(name).replace('-', "\\-");
    if arg.is_empty() {
        format!("\\fB{name}\\fR")
    } else {
        format!("\\fB{name}\\fR \\fI{}\\fR", esc(arg))
    }
}

/// The man page (section 1, roff) for `name`, from its `--help` text.
pub fn man_page(name: &str, summary: &str, help: &str, see_also: &str) -> String {
    let mut blocks = help.split("\n\n");
    let synopsis = blocks.next().unwrap_or("");
    let mut out = format!(
        ".TH {} 1 \"\" \"pmig {}\" \"User Commands\"\n.SH NAME\n{} \\- {}\n.SH SYNOPSIS\n",
        name.to_uppercase(),
        env!("CARGO_PKG_VERSION"),
        esc(name),
        esc(summary)
    );
    let mut lines: Vec<String> = Vec::new();
    for l in synopsis.lines() {
        let l = l.strip_prefix("usage:").unwrap_or(l);
        match lines.last_mut() {
            Some(last) if !l.trim_start().starts_with(name) => {
                last.push(' ');
                last.push_str(l.trim());
            }
            _ => lines.push(l.trim().to_string()),
        }
    }
    for l in &lines {
        let rest = l.strip_prefix(name).unwrap_or(l);
        out += &format!("\\fB{}\\fR{}\n.br\n", esc(name), esc(rest).replace('-', "\\-"));
    }
    let (mut options, mut environment) = (String::new(), String::new());
    out += ".SH DESCRIPTION\n";
    for block in blocks {
        if !block.starts_with("  ") {
            out += &format!("{}\n.PP\n", esc(&block.lines().map(str::trim).collect::<Vec<_>>().join("\n")));
            continue;
        }
        let mut entry: Option<(String, String)> = None;
        let mut flush = |entry: &mut Option<(String, String)>| {
            if let Some((spec, text)) = entry.take() {
                let to = if spec.starts_with("PMIG_") { &mut environment } else { &mut options };
                *to += &format!(".TP\n{}\n{}\n", opt(&spec), esc(text.trim()));
            }
        };
        for l in block.lines() {
            let indent = l.len() - l.trim_start().len();
            if indent == 2 {
                flush(&mut entry);
                let l = l.trim();
                let (spec, text) = l.split_once("  ").unwrap_or((l, ""));
                entry = Some((spec.trim().to_string(), text.trim().to_string()));
            } else if let Some((_, text)) = entry.as_mut() {
                text.push('\n');
                text.push_str(l.trim());
            }
        }
        flush(&mut entry);
    }
    if out.ends_with(".PP\n") {
        out.truncate(out.len() - 4);
    }
    if !options.is_empty() {
        out += ".SH OPTIONS\n";
        out += &options;
        out += ".TP\n\\fB\\-h\\fR, \\fB\\-\\-help\\fR\nprint this text and exit\n";
        out += ".TP\n\\fB\\-V\\fR, \\fB\\-\\-version\\fR\nprint the version and exit\n";
    }
    if !environment.is_empty() {
        out += ".SH ENVIRONMENT\n";
        out += &environment;
    }
    out += &format!(".SH SEE ALSO\n\\fB{see_also}\\fR(1)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "usage: prog [--a] FILE
            [--b X]
       prog --c

Does things.
Over two lines.

  --a          the a
  --b X        the b,
               at length
  --long-option-name ARG
               said below
  PMIG_DEBUG=1  logs";

    #[test]
    fn the_page_has_every_part_of_the_help() {
        let m = man_page("prog", "does things", HELP, "other");
        assert!(m.starts_with(".TH PROG 1 "), "{m}");
        assert!(m.contains("\\fBprog\\fR [\\-\\-a] FILE [\\-\\-b X]\n.br\n\\fBprog\\fR \\-\\-c\n"), "{m}");
        assert!(m.contains(".SH DESCRIPTION\nDoes things.\nOver two lines.\n.SH OPTIONS\n"), "{m}");
        assert!(m.contains(".TP\n\\fB\\-\\-b\\fR \\fIX\\fR\nthe b,\nat length\n"), "{m}");
        assert!(m.contains(".TP\n\\fB\\-\\-long\\-option\\-name\\fR \\fIARG\\fR\nsaid below\n"), "{m}");
        assert!(m.contains(".SH ENVIRONMENT\n.TP\n\\fBPMIG_DEBUG=1\\fR\nlogs\n"), "{m}");
        assert!(m.ends_with(".SH SEE ALSO\n\\fBother\\fR(1)\n"), "{m}");
    }

    #[test]
    fn errors_show_the_synopsis_only() {
        let e = usage_error("prog", HELP, "unknown option --z");
        assert_eq!(e, "prog: unknown option --z\nusage: prog [--a] FILE\n            [--b X]\n       prog --c\n(`prog --help` says more)");
    }

    #[test]
    fn roff_requests_in_text_are_escaped() {
        assert_eq!(esc(".x \\y"), "\\&.x \\ey");
    }
}
