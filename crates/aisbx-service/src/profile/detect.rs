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
    ///
    /// A broken profile is never skipped: when one could have been chosen at the
    /// step that decides (its name, aliases, extensions, interpreters, markers or
    /// hints fit), the run is refused with its file:line errors rather than given
    /// another profile or told the language is unknown (docs/PROFILES.md).
    pub fn detect(&self, input: &DetectInput<'_>) -> Result<Detection, ProfileError> {
        // Resolving every language profile costs real time: only when needed.
        let cell = std::cell::OnceCell::new();
        let langs = || -> &[Candidate] { cell.get_or_init(|| self.candidates()) };
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
                    match find_language(langs(), input)? {
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
            return match find_language(langs(), input)? {
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
        if let Some(f) = input
            .dir
            .map(|d| markers(langs(), Some(d)))
            .transpose()?
            .flatten()
        {
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
    /// the name (`py`, `js`, ...), which needs every profile resolved. A profile of
    /// that name that is broken is the answer's error, whatever else answers.
    fn language_profile<'a>(
        &self,
        asked: &str,
        langs: impl FnOnce() -> &'a [Candidate],
    ) -> Result<Profile, ProfileError> {
        let named = asked.to_ascii_lowercase();
        match self.resolve(&named) {
            Ok(p)
                if p.language
                    .as_ref()
                    .is_some_and(|l| l.name == p.name && l.is_called(asked)) =>
            {
                return Ok(p);
            }
            Err(e) if !self.files(self.canonical(&named)).is_empty() => {
                return Err(broken(&named, &e, &format!("--lang {asked}"), false));
            }
            _ => {}
        }
        by_lang(langs(), asked)
    }

    /// Every language profile for detection, in language order: resolved, or
    /// broken with what it could have matched.
    fn candidates(&self) -> Vec<Candidate> {
        self.order
            .iter()
            .filter_map(|n| match self.resolve(n) {
                Ok(p) => p
                    .language
                    .as_ref()
                    .is_some_and(|l| l.name == p.name)
                    .then(|| Candidate::Valid(Box::new(p))),
                Err(e) => self.sketch(n).map(|could| Candidate::Broken {
                    name: n.clone(),
                    error: e,
                    could: could.map(Box::new),
                }),
            })
            .collect()
    }

    /// What the broken profile `name` could have matched had it been valid: `None`
    /// when it is not a language profile; `Some(None)` when nothing can be known
    /// (its file is not TOML and it shadows no language); else the union of what
    /// its own `[runtime]` says and what the lower source's profile of the same
    /// name (which it shadows) matches.
    fn sketch(&self, name: &str) -> Option<Option<Language>> {
        let stack = self.files(name);
        let top = stack.last()?;
        let lower = (0..stack.len() - 1)
            .rev()
            .find_map(|i| self.resolve_node((name.to_string(), i)).ok())
            .and_then(|p| p.language.filter(|l| l.name == name));
        let own = match top.layer() {
            Ok(layer) => Some(sketch_of_layer(layer)),
            Err(_) => top
                .text
                .as_deref()
                .or(top.builtin_text)
                .and_then(|t| toml::from_str::<toml::Table>(t).ok())
                .map(|t| sketch_of_table(&t)),
        };
        match (own, lower) {
            (None, Some(l)) => Some(Some(l)),
            (None, None) => Some(None),
            (Some(o), Some(mut l)) => {
                for (to, from) in [
                    (&mut l.aliases, o.aliases),
                    (&mut l.interpreters, o.interpreters),
                    (&mut l.extensions, o.extensions),
                    (&mut l.markers, o.markers),
                    (&mut l.hints, o.hints),
                ] {
                    for x in from {
                        if !to.contains(&x) {
                            to.push(x);
                        }
                    }
                }
                Some(Some(l))
            }
            (Some(o), None) => (o.name == name).then_some(Some(o)),
        }
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

/// A language profile as detection sees it.
#[derive(Debug, Clone)]
enum Candidate {
    Valid(Box<Profile>),
    /// A profile that does not resolve; `could`: what it might have matched
    /// (`None`: anything).
    Broken {
        name: String,
        error: ProfileError,
        could: Option<Box<Language>>,
    },
}

impl Candidate {
    /// Whether a step that tests languages with `test` could choose it.
    fn fits(&self, test: impl Fn(&Language) -> bool) -> bool {
        match self {
            Candidate::Valid(p) => test(lang(p)),
            Candidate::Broken { could: Some(l), .. } => test(l),
            Candidate::Broken { could: None, .. } => true,
        }
    }
}

/// Of the candidates a step found (in language order), the first, unless one of
/// them is broken: then that one's errors, `what` saying what it was a candidate for.
fn decide<'a>(hits: &[&'a Candidate], what: &str) -> Result<Option<&'a Profile>, ProfileError> {
    if let Some(Candidate::Broken { name, error, could }) =
        hits.iter().find(|c| matches!(c, Candidate::Broken { .. }))
    {
        return Err(broken(name, error, what, could.is_none()));
    }
    Ok(hits.iter().find_map(|c| match c {
        Candidate::Valid(p) => Some(&**p),
        Candidate::Broken { .. } => None,
    }))
}

/// The error of a broken profile that could have been chosen for `what`;
/// `unknown`: its file is not TOML, so it could have been chosen for anything.
fn broken(name: &str, e: &ProfileError, what: &str, unknown: bool) -> ProfileError {
    let unknown = if unknown {
        " (its file is not TOML, so what it would match is unknown)"
    } else {
        ""
    };
    error(
        "profile",
        format!(
            "profile '{name}' could be chosen for {what}{unknown}, but it is invalid (fix or remove the file named here; no other profile stands in for it): {e}"
        ),
    )
}

/// The runtime a profile's own checked file declares (its parents not included).
fn sketch_of_layer(layer: &super::Layer) -> Language {
    let text = |k: &str| match layer.values.get(k).map(|e| &e.val) {
        Some(super::Val::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let list = |k: &str| match layer.values.get(&format!("runtime.{k}")).map(|e| &e.val) {
        Some(super::Val::List(l) | super::Val::Append(l)) => l.clone(),
        _ => Vec::new(),
    };
    sketch(text("runtime.language"), list)
}

/// The runtime a file that fails its check declares, read as plain TOML.
fn sketch_of_table(t: &toml::Table) -> Language {
    let rt = t.get("runtime").and_then(toml::Value::as_table);
    let get = |k: &str| rt.and_then(|r| r.get(k));
    let strings = |v: &toml::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |k: &str| match get(k) {
        Some(toml::Value::Table(a)) => a.get("append").map(strings).unwrap_or_default(),
        Some(v) => strings(v),
        None => Vec::new(),
    };
    let name = get("language")
        .and_then(toml::Value::as_str)
        .unwrap_or_default()
        .to_string();
    sketch(name, list)
}

fn sketch(name: String, list: impl Fn(&str) -> Vec<String>) -> Language {
    Language {
        name: name.to_ascii_lowercase(),
        aliases: list("aliases"),
        interpreters: list("interpreters"),
        extensions: list("extensions")
            .into_iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .collect(),
        markers: list("markers"),
        hints: list("hints"),
        ..EMPTY_LANGUAGE.clone()
    }
}

/// Steps 3 to 5 for code or a file: extension, shebang, markers, content.
fn find_language(
    langs: &[Candidate],
    input: &DetectInput<'_>,
) -> Result<Option<Found>, ProfileError> {
    if let Some((path, content)) = input.file {
        let shown = path.display();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            let hits: Vec<&Candidate> = langs
                .iter()
                .filter(|c| c.fits(|l| l.has_extension(ext)))
                .collect();
            let what = format!("the .{ext} extension of {shown}");
            if let Some(p) = decide(&hits, &what)? {
                return Ok(Some(Found {
                    profile: p.clone(),
                    basis: Basis::Extension,
                    reason: format!(
                        "{} from the .{ext} extension of {shown}{}",
                        p.name,
                        others(&hits)
                    ),
                }));
            }
        }
        if let Some(f) = by_shebang(langs, content, &shown.to_string())? {
            return Ok(Some(f));
        }
    }
    if let Some(code) = input.code
        && let Some(f) = by_shebang(langs, code.as_bytes(), "the code")?
    {
        return Ok(Some(f));
    }
    let dir = input.dir.or_else(|| {
        input
            .file
            .and_then(|(p, _)| p.parent())
            .filter(|d| !d.as_os_str().is_empty())
    });
    if let Some(f) = markers(langs, dir)? {
        return Ok(Some(f));
    }
    let content = match (input.code, input.file) {
        (Some(c), _) => Some(c.as_bytes()),
        (None, Some((_, c))) => Some(c),
        _ => None,
    };
    match content {
        Some(c) => by_content(langs, &String::from_utf8_lossy(c)),
        None => Ok(None),
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

fn by_lang(langs: &[Candidate], asked: &str) -> Result<Profile, ProfileError> {
    let hits: Vec<&Candidate> = langs
        .iter()
        .filter(|c| c.fits(|l| l.is_called(asked)))
        .collect();
    if let Some(p) = decide(&hits, &format!("--lang {asked}"))? {
        return Ok(p.clone());
    }
    let known: Vec<&str> = langs
        .iter()
        .filter_map(|c| match c {
            Candidate::Valid(p) => Some(p.name.as_str()),
            Candidate::Broken { .. } => None,
        })
        .collect();
    let mut msg = format!("unknown language '{asked}'");
    if let Some(s) = super::schema::suggest(asked, known.iter().copied()) {
        msg.push_str(&format!("; did you mean '{s}'?"));
    } else {
        msg.push_str(&format!(" (known: {})", known.join(", ")));
    }
    Err(error("language", msg))
}

fn name_of(c: &Candidate) -> &str {
    match c {
        Candidate::Valid(p) => &p.name,
        Candidate::Broken { name, .. } => name,
    }
}

fn others(hits: &[&Candidate]) -> String {
    if hits.len() < 2 {
        return String::new();
    }
    let rest: Vec<&str> = hits[1..].iter().map(|c| name_of(c)).collect();
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
fn by_shebang(
    langs: &[Candidate],
    content: &[u8],
    what: &str,
) -> Result<Option<Found>, ProfileError> {
    let Some(prog) = runtime::shebang_program(content) else {
        return Ok(None);
    };
    let hits: Vec<&Candidate> = langs
        .iter()
        .filter(|c| c.fits(|l| l.runs_shebang(&prog)))
        .collect();
    let Some(p) = decide(&hits, &format!("the #!{prog} line of {what}"))? else {
        return Ok(None);
    };
    Ok(Some(Found {
        profile: p.clone(),
        basis: Basis::Shebang,
        reason: format!(
            "{} from the #!{prog} line of {what}{}",
            p.name,
            others(&hits)
        ),
    }))
}

/// The language whose marker files are in `dir`. A broken profile whose markers
/// are there is an error; so is one that could match anything, when any
/// language's markers are there (a directory with none decides nothing).
fn markers(langs: &[Candidate], dir: Option<&Path>) -> Result<Option<Found>, ProfileError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let entries = dir_entries(dir);
    let hits: Vec<(&Candidate, Vec<String>)> = langs
        .iter()
        .map(|c| {
            let m = match c {
                Candidate::Valid(p) => found_markers(lang(p), &entries),
                Candidate::Broken { could: Some(l), .. } => found_markers(l, &entries),
                Candidate::Broken { could: None, .. } => Vec::new(),
            };
            (c, m)
        })
        .filter(|(_, m)| !m.is_empty())
        .collect();
    if hits.is_empty() {
        return Ok(None);
    }
    let mut all: Vec<&Candidate> = hits.iter().map(|(c, _)| *c).collect();
    all.extend(
        langs
            .iter()
            .filter(|c| matches!(c, Candidate::Broken { could: None, .. })),
    );
    let what = format!("the project markers in {}", dir.display());
    let Some(p) = decide(&all, &what)? else {
        return Ok(None);
    };
    let m = &hits[0].1;
    let mut reason = format!("{} from {} in {}", p.name, m.join(", "), dir.display());
    if hits.len() > 1 {
        let rest: Vec<String> = hits[1..]
            .iter()
            .map(|(c, m)| format!("{} for {}", m.join(", "), name_of(c)))
            .collect();
        reason.push_str(&format!(
            " (also {}: the first in language order wins)",
            rest.join("; ")
        ));
    }
    Ok(Some(Found {
        profile: p.clone(),
        basis: Basis::Marker,
        reason,
    }))
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

fn by_content(langs: &[Candidate], code: &str) -> Result<Option<Found>, ProfileError> {
    let hits_of = |l: &Language| -> Vec<String> {
        l.hints
            .iter()
            .filter(|h| hint_matches(code, h))
            .cloned()
            .collect()
    };
    let mut scored: Vec<(usize, &Candidate, Vec<String>)> = langs
        .iter()
        .map(|c| {
            let hits = match c {
                Candidate::Valid(p) => hits_of(lang(p)),
                Candidate::Broken { could: Some(l), .. } => hits_of(l),
                // Could match anything: it scores, so it is never passed over.
                Candidate::Broken { could: None, .. } => vec![String::new()],
            };
            (hits.len(), c, hits)
        })
        .filter(|(n, _, _)| *n > 0)
        .collect();
    let any: Vec<&Candidate> = scored.iter().map(|s| s.1).collect();
    decide(&any, "the code itself (its telling keywords)")?;
    // Stable: equal scores keep language order.
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    let Some((n, Candidate::Valid(p), hits)) = scored.first() else {
        return Ok(None);
    };
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
        .map(|(_, c, _)| name_of(c))
        .collect();
    if !ties.is_empty() {
        reason.push_str(&format!(
            "; {} scored the same, the first in language order wins",
            ties.join(", ")
        ));
    }
    Ok(Some(Found {
        profile: (**p).clone(),
        basis: Basis::Code,
        reason,
    }))
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
