//! Which profile a run uses, and why. The order (docs/PROFILES.md): an explicit
//! profile; `--lang`; the file's extension, then its shebang; the project's marker
//! files; then the code itself. Languages are tried in catalog order (the
//! built-ins' order, then other language profiles by name), and the reason names
//! what else matched, so a choice between candidates is never silent.

use std::path::Path;

use super::{Catalog, DEFAULT_PROFILE, Profile, ProfileError, error};
use crate::runtime::{self, Language};

/// What a run or `aisbx profile detect` knows.
#[derive(Debug, Clone, Default)]
pub struct DetectInput<'a> {
    /// `--profile`.
    pub profile: Option<&'a str>,
    /// `--lang`.
    pub lang: Option<&'a str>,
    /// A script: its path and content.
    pub file: Option<(&'a Path, &'a [u8])>,
    /// `--code`.
    pub code: Option<&'a str>,
    /// The project directory whose marker files count (the workdir).
    pub dir: Option<&'a Path>,
}

/// The step of the order that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Profile,
    Lang,
    Extension,
    Shebang,
    Marker,
    Code,
    Default,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Profile => "profile",
            Basis::Lang => "lang",
            Basis::Extension => "extension",
            Basis::Shebang => "shebang",
            Basis::Marker => "marker",
            Basis::Code => "code",
            Basis::Default => "default",
        }
    }
}

/// The chosen profile, the language code runs in, and why.
#[derive(Debug, Clone)]
pub struct Detection {
    pub profile: Profile,
    pub language: Option<Language>,
    pub basis: Basis,
    pub reason: String,
}

impl Detection {
    /// Whether aisbx inferred the choice (rather than being told, or defaulting).
    pub fn inferred(&self) -> bool {
        matches!(
            self.basis,
            Basis::Extension | Basis::Shebang | Basis::Marker | Basis::Code
        )
    }
}

/// A language found by steps 3 to 5.
struct Found {
    profile: Profile,
    basis: Basis,
    reason: String,
}

impl Catalog {
    /// Choose the profile (and language) for a run.
    pub fn detect(&self, input: &DetectInput<'_>) -> Result<Detection, ProfileError> {
        // Resolving every language profile costs real time: only when needed.
        let cell = std::cell::OnceCell::new();
        let langs = || -> &[Profile] { cell.get_or_init(|| self.languages()) };
        if let Some(name) = input.profile {
            let profile = self.resolve(name)?;
            let (language, why) = match (&profile.language, input.lang) {
                (Some(l), Some(asked)) if !l.is_called(asked) => {
                    return Err(error(
                        "profile",
                        format!(
                            "profile '{}' runs {}, not '{asked}': drop --lang or choose a {asked} profile",
                            profile.name, l.name
                        ),
                    ));
                }
                (Some(l), _) => (Some(l.clone()), String::new()),
                (None, Some(asked)) => {
                    let p = self.language_profile(asked, langs)?;
                    (p.language.clone(), format!("; language {asked} given"))
                }
                (None, None) if input.file.is_some() || input.code.is_some() => {
                    match self.find_language(langs(), input)? {
                        Some(f) => (
                            f.profile.language.clone(),
                            format!("; language {}", f.reason),
                        ),
                        None => return Err(undetectable(input)),
                    }
                }
                (None, None) => (None, String::new()),
            };
            let reason = format!("profile {} given{why}", profile.name);
            return Ok(Detection {
                profile,
                language,
                basis: Basis::Profile,
                reason,
            });
        }
        if let Some(asked) = input.lang {
            let profile = self.language_profile(asked, langs)?;
            return Ok(Detection {
                language: profile.language.clone(),
                reason: format!("language {asked} given"),
                profile,
                basis: Basis::Lang,
            });
        }
        if input.file.is_some() || input.code.is_some() {
            return match self.find_language(langs(), input)? {
                Some(f) => Ok(Detection {
                    language: f.profile.language.clone(),
                    reason: f.reason,
                    basis: f.basis,
                    profile: f.profile,
                }),
                None => Err(undetectable(input)),
            };
        }
        // A command: the project's markers, else the base profile.
        if let Some(f) = input.dir.and_then(|d| markers(langs(), Some(d))) {
            let available = f
                .profile
                .language
                .as_ref()
                .map(|l| runtime::resolve(l, &self.host_path));
            return match available {
                Some(Err(missing)) => Ok(Detection {
                    profile: self.resolve(DEFAULT_PROFILE)?,
                    language: None,
                    basis: Basis::Default,
                    reason: format!(
                        "a command; {} but {missing}, so profile {DEFAULT_PROFILE}",
                        f.reason
                    ),
                }),
                _ => Ok(Detection {
                    language: f.profile.language.clone(),
                    reason: format!("a command; {}", f.reason),
                    basis: f.basis,
                    profile: f.profile,
                }),
            };
        }
        Ok(Detection {
            profile: self.resolve(DEFAULT_PROFILE)?,
            language: None,
            basis: Basis::Default,
            reason: "a command, and no project marker in the workdir".into(),
        })
    }

    /// The profile for `--lang asked`: the language profile of that name when there
    /// is one (resolving only it), else the first language profile that answers to
    /// the name (`py`, `js`, ...), which needs every profile resolved.
    fn language_profile<'a>(
        &self,
        asked: &str,
        langs: impl FnOnce() -> &'a [Profile],
    ) -> Result<Profile, ProfileError> {
        if let Ok(p) = self.resolve(asked)
            && p.language
                .as_ref()
                .is_some_and(|l| l.name == p.name && l.is_called(asked))
        {
            return Ok(p);
        }
        by_lang(langs(), asked)
    }

    /// Steps 3 to 5 for code or a file: extension, shebang, markers, content.
    fn find_language(
        &self,
        langs: &[Profile],
        input: &DetectInput<'_>,
    ) -> Result<Option<Found>, ProfileError> {
        if let Some((path, content)) = input.file {
            let shown = path.display();
            if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                let hits: Vec<&Profile> = langs
                    .iter()
                    .filter(|p| lang(p).has_extension(ext))
                    .collect();
                if let Some(p) = hits.first() {
                    return Ok(Some(Found {
                        profile: (*p).clone(),
                        basis: Basis::Extension,
                        reason: format!(
                            "{} from the .{ext} extension of {shown}{}",
                            p.name,
                            others(&hits)
                        ),
                    }));
                }
            }
            if let Some(f) = by_shebang(langs, content, &shown.to_string()) {
                return Ok(Some(f));
            }
        }
        if let Some(f) = input
            .code
            .and_then(|code| by_shebang(langs, code.as_bytes(), "the code"))
        {
            return Ok(Some(f));
        }
        let dir = input.dir.or_else(|| {
            input
                .file
                .and_then(|(p, _)| p.parent())
                .filter(|d| !d.as_os_str().is_empty())
        });
        if let Some(f) = markers(langs, dir) {
            return Ok(Some(f));
        }
        let content = match (input.code, input.file) {
            (Some(c), _) => Some(c.as_bytes()),
            (None, Some((_, c))) => Some(c),
            _ => None,
        };
        Ok(content.and_then(|c| by_content(langs, &String::from_utf8_lossy(c))))
    }

    /// Every language profile with the marker files found in `dir`.
    pub fn markers_in(&self, dir: &Path) -> Vec<(String, Vec<String>)> {
        let langs = self.languages();
        let entries = dir_entries(dir);
        langs
            .iter()
            .map(|p| (p.name.clone(), found_markers(lang(p), &entries)))
            .filter(|(_, m)| !m.is_empty())
            .collect()
    }
}

fn lang(p: &Profile) -> &Language {
    // Only profiles with a language are in the list `languages()` returns.
    p.language.as_ref().unwrap_or(&EMPTY_LANGUAGE)
}

static EMPTY_LANGUAGE: Language = Language {
    name: String::new(),
    aliases: Vec::new(),
    interpreters: Vec::new(),
    requires: Vec::new(),
    feed: runtime::Feed::None,
    file_name: String::new(),
    run: Vec::new(),
    run_code: Vec::new(),
    extensions: Vec::new(),
    markers: Vec::new(),
    hints: Vec::new(),
    env: Vec::new(),
};

fn by_lang(langs: &[Profile], asked: &str) -> Result<Profile, ProfileError> {
    langs
        .iter()
        .find(|p| lang(p).is_called(asked))
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = langs.iter().map(|p| p.name.as_str()).collect();
            let mut msg = format!("unknown language '{asked}'");
            if let Some(s) = super::schema::suggest(asked, known.iter().copied()) {
                msg.push_str(&format!("; did you mean '{s}'?"));
            } else {
                msg.push_str(&format!(" (known: {})", known.join(", ")));
            }
            error("language", msg)
        })
}

fn others(hits: &[&Profile]) -> String {
    if hits.len() < 2 {
        return String::new();
    }
    let rest: Vec<&str> = hits[1..].iter().map(|p| p.name.as_str()).collect();
    format!(
        " (also {}: the first in language order wins)",
        rest.join(", ")
    )
}

fn undetectable(input: &DetectInput<'_>) -> ProfileError {
    let what = match input.file {
        Some((p, _)) => format!("the language of {}", p.display()),
        None => "the language of the code".to_string(),
    };
    error(
        "language",
        format!(
            "cannot tell {what}: no known extension, #! line, project marker or telling keyword; give --lang or --profile"
        ),
    )
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A marker is a file name, or `*.suffix` for any file ending so.
fn found_markers(l: &Language, entries: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in &l.markers {
        if let Some(suffix) = m.strip_prefix('*') {
            out.extend(entries.iter().filter(|e| e.ends_with(suffix)).cloned());
        } else if entries.iter().any(|e| e == m) {
            out.push(m.clone());
        }
    }
    out
}

/// The language whose interpreter a `#!` line names; `what` says where the line is.
fn by_shebang(langs: &[Profile], content: &[u8], what: &str) -> Option<Found> {
    let prog = runtime::shebang_program(content)?;
    let hits: Vec<&Profile> = langs
        .iter()
        .filter(|p| lang(p).runs_shebang(&prog))
        .collect();
    let p = hits.first()?;
    Some(Found {
        profile: (*p).clone(),
        basis: Basis::Shebang,
        reason: format!(
            "{} from the #!{prog} line of {what}{}",
            p.name,
            others(&hits)
        ),
    })
}

fn markers(langs: &[Profile], dir: Option<&Path>) -> Option<Found> {
    let dir = dir?;
    let entries = dir_entries(dir);
    let hits: Vec<(&Profile, Vec<String>)> = langs
        .iter()
        .map(|p| (p, found_markers(lang(p), &entries)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let (p, m) = hits.first()?;
    let mut reason = format!("{} from {} in {}", p.name, m.join(", "), dir.display());
    if hits.len() > 1 {
        let rest: Vec<String> = hits[1..]
            .iter()
            .map(|(p, m)| format!("{} for {}", m.join(", "), p.name))
            .collect();
        reason.push_str(&format!(
            " (also {}: the first in language order wins)",
            rest.join("; ")
        ));
    }
    Some(Found {
        profile: (*p).clone(),
        basis: Basis::Marker,
        reason,
    })
}

/// Whether `hint` occurs in `code` as a whole word where it begins or ends with one.
fn hint_matches(code: &str, hint: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let starts_word = hint.starts_with(word);
    let ends_word = hint.ends_with(word);
    code.match_indices(hint).any(|(i, _)| {
        let before_ok = !starts_word || !code[..i].chars().next_back().is_some_and(word);
        let after_ok = !ends_word || !code[i + hint.len()..].chars().next().is_some_and(word);
        before_ok && after_ok
    })
}

fn by_content(langs: &[Profile], code: &str) -> Option<Found> {
    let mut scored: Vec<(usize, &Profile, Vec<&str>)> = langs
        .iter()
        .map(|p| {
            let hits: Vec<&str> = lang(p)
                .hints
                .iter()
                .map(String::as_str)
                .filter(|h| hint_matches(code, h))
                .collect();
            (hits.len(), p, hits)
        })
        .filter(|(n, _, _)| *n > 0)
        .collect();
    // Stable: equal scores keep language order.
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    let (n, p, hits) = scored.first()?;
    let quoted: Vec<String> = hits.iter().map(|h| format!("{:?}", h.trim())).collect();
    let mut reason = format!(
        "{} from the code itself ({n} telling keyword{}: {})",
        p.name,
        if *n == 1 { "" } else { "s" },
        quoted.join(", ")
    );
    let ties: Vec<&str> = scored[1..]
        .iter()
        .filter(|(m, _, _)| m == n)
        .map(|(_, p, _)| p.name.as_str())
        .collect();
    if !ties.is_empty() {
        reason.push_str(&format!(
            "; {} scored the same, the first in language order wins",
            ties.join(", ")
        ));
    }
    Some(Found {
        profile: (*p).clone(),
        basis: Basis::Code,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_match_whole_words() {
        assert!(hint_matches("x = 1\nend\n", "end"));
        assert!(!hint_matches("list.append(1)", "end"));
        assert!(hint_matches("console.log(1)", "console.log"));
        assert!(hint_matches("a => b", "=>"));
        assert!(!hint_matches("define x", "def "));
        assert!(hint_matches("def f():", "def "));
    }
}
