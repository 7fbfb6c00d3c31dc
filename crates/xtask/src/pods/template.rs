//! The part of External Secrets' Go templates (engineVersion v2) our ExternalSecrets use:
//! `{{ .key }}` and `{{ .key | urlquery }}`. Anything else is an error, so a template using more
//! fails here instead of being filled wrongly; a full Go-template engine is not worth its weight
//! for a test that only needs these two forms.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// Renders `template` with `values`; every referenced key must have a value.
pub fn render(template: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").with_context(|| format!("unclosed `{{{{` in {template:?}"))? + start;
        let action = rest[start + 2..end].trim();
        let mut stages = action.split('|').map(str::trim);
        let field = stages.next().unwrap_or_default();
        let key = field.strip_prefix('.').filter(|k| !k.is_empty() && !k.contains(['.', ' ']));
        let Some(key) = key else { bail!("unsupported template action `{{{{ {action} }}}}`") };
        let mut value =
            values.get(key).with_context(|| format!("no test value for `{key}` (template {template:?})"))?.clone();
        for function in stages {
            value = match function {
                "urlquery" => query_escape(&value),
                other => bail!("unsupported template function `{other}` in `{{{{ {action} }}}}`"),
            };
        }
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Go's `url.QueryEscape` (what `urlquery` calls): letters, digits and `-_.~` stay, a space
/// becomes `+`, every other byte `%XX`.
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, String> {
        [("user", "app"), ("password", "p@ss:w/rd?&%")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fills_fields_and_percent_encodes_with_urlquery() {
        let url = render("postgres://{{ .user }}:{{ .password | urlquery }}@db/x", &values()).expect("renders");
        assert_eq!(url, "postgres://app:p%40ss%3Aw%2Frd%3F%26%25@db/x");
        assert_eq!(query_escape("a b~*"), "a+b~%2A", "as Go's url.QueryEscape");
    }

    #[test]
    fn unknown_keys_functions_and_actions_are_errors() {
        for template in ["{{ .missing }}", "{{ .user | b64enc }}", "{{ range .x }}", "{{ .user "] {
            assert!(render(template, &values()).is_err(), "{template}");
        }
    }
}
