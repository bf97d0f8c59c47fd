//! Profiles: what a run may do and what it runs with. These are the built-in
//! defaults of the SPEC ("Isolation of every run"); every limit can be overridden
//! per call within the bounds checked in [`check_limits`].

use std::time::Duration;

use aisbx_jail::{Enforcement, Limits, SeccompLevel};

use crate::runtime::{self, Language};
use crate::{LimitOverrides, ProfileInfo, ServiceError};

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub language: Option<&'static Language>,
    pub extends: Vec<String>,
    pub limits: Limits,
    pub workspace_bytes: u64,
    pub env: Vec<(String, String)>,
    pub seccomp: SeccompLevel,
    pub landlock: Enforcement,
}

pub const DEFAULT_PROFILE: &str = "default";

/// The SPEC's default limits.
pub fn default_limits() -> Limits {
    Limits {
        wall: Duration::from_secs(30),
        memory_bytes: 512 << 20,
        pids: 256,
        cpus: 1.0,
        nofile: 1024,
        tmp_bytes: 256 << 20,
        output_bytes: 1 << 20,
    }
}

fn base(name: &str, description: &str) -> Profile {
    Profile {
        name: name.to_string(),
        description: description.to_string(),
        language: None,
        extends: Vec::new(),
        limits: default_limits(),
        workspace_bytes: 1 << 30,
        env: Vec::new(),
        seccomp: SeccompLevel::Default,
        landlock: Enforcement::BestEffort,
    }
}

/// Every built-in profile: `default`, then one per language.
pub fn builtins() -> Vec<Profile> {
    let mut v = vec![base(
        DEFAULT_PROFILE,
        "Any command, with the default isolation and limits",
    )];
    for l in runtime::LANGUAGES {
        let mut p = base(
            l.name,
            &format!("{} code, with the default isolation and limits", l.name),
        );
        p.language = Some(l);
        p.extends = vec![DEFAULT_PROFILE.to_string()];
        p.env = l
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.push(p);
    }
    v
}

pub fn find(name: &str) -> Result<Profile, ServiceError> {
    builtins()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            let names: Vec<String> = builtins().into_iter().map(|p| p.name).collect();
            ServiceError::invalid(
                "profile",
                format!("no profile named '{name}' (known: {})", names.join(", ")),
            )
        })
}

pub fn info(p: &Profile, host_path: &str) -> ProfileInfo {
    ProfileInfo {
        name: p.name.clone(),
        description: p.description.clone(),
        language: p.language.map(|l| l.name.to_string()),
        extends: p.extends.clone(),
        available: p
            .language
            .is_none_or(|l| runtime::resolve(l, host_path).is_ok()),
    }
}

/// Apply per-call overrides, refusing values outside sane bounds.
pub fn check_limits(mut l: Limits, o: &LimitOverrides) -> Result<Limits, ServiceError> {
    if let Some(t) = o.timeout_secs {
        if !(t > 0.0 && t <= 86_400.0) {
            return Err(ServiceError::invalid(
                "timeout",
                format!("{t} s is out of range: give 0 < seconds ≤ 86400"),
            ));
        }
        l.wall = Duration::from_secs_f64(t);
    }
    if let Some(m) = o.memory_bytes {
        if !((4 << 20)..=(1 << 40)).contains(&m) {
            return Err(ServiceError::invalid(
                "memory",
                format!("{m} bytes is out of range: give 4M to 1T"),
            ));
        }
        l.memory_bytes = m;
    }
    if let Some(p) = o.pids {
        if !(2..=1_000_000).contains(&p) {
            return Err(ServiceError::invalid(
                "pids",
                format!("{p} is out of range: give 2 to 1000000"),
            ));
        }
        l.pids = p;
    }
    if let Some(c) = o.cpus {
        if !(0.01..=1024.0).contains(&c) {
            return Err(ServiceError::invalid(
                "cpus",
                format!("{c} is out of range: give 0.01 to 1024"),
            ));
        }
        l.cpus = c;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let p = find("default").unwrap();
        assert_eq!(p.limits.wall, Duration::from_secs(30));
        assert_eq!(p.limits.memory_bytes, 512 << 20);
        assert_eq!(p.limits.pids, 256);
        assert_eq!(p.limits.nofile, 1024);
        assert_eq!(p.limits.tmp_bytes, 256 << 20);
        assert_eq!(p.limits.output_bytes, 1 << 20);
        assert_eq!(p.workspace_bytes, 1 << 30);
    }

    #[test]
    fn unknown_profile_names_the_field() {
        match find("nope") {
            Err(ServiceError::InvalidArgument { field, .. }) => assert_eq!(field, "profile"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overrides_are_bounded() {
        let l = default_limits();
        let ok = check_limits(
            l.clone(),
            &LimitOverrides {
                timeout_secs: Some(2.5),
                memory_bytes: Some(64 << 20),
                pids: Some(10),
                cpus: Some(0.5),
            },
        )
        .unwrap();
        assert_eq!(ok.wall, Duration::from_millis(2500));
        assert_eq!(ok.pids, 10);
        for bad in [
            LimitOverrides {
                timeout_secs: Some(0.0),
                ..Default::default()
            },
            LimitOverrides {
                timeout_secs: Some(f64::NAN),
                ..Default::default()
            },
            LimitOverrides {
                memory_bytes: Some(1),
                ..Default::default()
            },
            LimitOverrides {
                pids: Some(1),
                ..Default::default()
            },
            LimitOverrides {
                cpus: Some(-1.0),
                ..Default::default()
            },
        ] {
            assert!(check_limits(l.clone(), &bad).is_err(), "{bad:?}");
        }
    }
}
